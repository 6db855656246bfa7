# Immortal's recipes. `just test` is what CI runs.

set shell := ["bash", "-euo", "pipefail", "-c"]

# lint, type-check, then the default test suite
test *ARGS: lint
    uv run pytest {{ARGS}}

# ruff (format + lint) and mypy --strict
lint:
    uv run ruff format --check .
    uv run ruff check .
    uv run mypy

# format the code in place
fmt:
    uv run ruff format .
    uv run ruff check --fix .

# run Immortal locally: nats-server, a hub, a worker and an example run
dev:
    uv run immortal dev

# slow fault-injection tests
chaos *ARGS:
    uv run pytest -m chaos -o addopts="" -s {{ARGS}}

# the benchmark suite (prints a table, writes bench/results/*.json)
bench *ARGS:
    uv run python -m bench {{ARGS}}
