# Thin wrappers over ./dev, which creates .venv and installs what each verb needs.
.PHONY: demo test lint bench proto
demo:
	./dev demo
test:
	./dev test
lint:
	./dev lint
bench:
	./dev bench
proto:
	./dev proto
