# DO NOT EDIT: generated from proto/paymaster/v1/ by `python -m collector_processor.api.protogen`.
"""Generated code of the Paymaster budget API (package ``paymaster.v1``).

Import the modules explicitly (``from paymaster.v1 import budget_pb2``); importing ``paymaster``
alone never loads them or grpc.
"""
