# perf-mcp developer commands. See README.md.
#
#   make demo    as root: set up the machine, start a broker on a private socket,
#                run the frontend as perfmcp-granted under a real MCP client and
#                print a report; as a user: the unprivileged part only
#   make test    the whole suite (as root, after the idempotent set-up)
#   make setup   the root set-up alone (packaging/dev-setup.sh)
#   make venv    the virtualenv alone (.venv from /usr/bin/python3)
#   make bench   the benchmarks under bench/
#   make clean   build and test caches (distclean also removes .venv)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV := .venv
PY := $(VENV)/bin/python
IS_ROOT := $(shell [ "$$(id -u)" -eq 0 ] && echo yes)
# Extra pytest arguments, e.g. make test PYTEST_ARGS='-k setup -x'
PYTEST_ARGS ?=

.PHONY: help venv setup test demo bench clean distclean

help:
	@sed -n '3,11p' Makefile | sed 's/^# \{0,1\}//'

venv:
	bash packaging/dev-setup.sh --venv-only

setup:
	bash packaging/dev-setup.sh

ifeq ($(IS_ROOT),yes)
test: setup
else
test:
	@[ -x $(PY) ] || $(MAKE) venv
	@echo "make test: not root: tests that need the broker, perf or polkit are skipped" >&2
endif
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo:
	bash packaging/run-demo.sh

bench:
	@[ -x $(PY) ] || $(MAKE) venv
	@shopt -s nullglob; files=(bench/*.py); \
	[ "$${#files[@]}" -gt 0 ] || { echo "make bench: no bench/*.py yet" >&2; exit 1; }; \
	for f in "$${files[@]}"; do echo "== $$f" >&2; $(PY) "$$f"; done

clean:
	rm -rf build dist ./*.egg-info .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0r rm -rf

distclean: clean
	rm -rf $(VENV)

# --- The broker as a system service (packaging/install.py, packaging/README-install.md)
#   sudo make install     the broker into PREFIX (root-owned), the systemd units, the
#                         polkit files and the group perf-mcp; enables the socket
#   sudo make uninstall   removes what `make install` put there (a changed rules file stays)
#   make deb              dist/perf-mcp-broker_VERSION_ARCH.deb (prefix /usr)
PREFIX ?= /usr/local
SYSTEM_PYTHON := /usr/bin/python3
DEB_OUT ?= dist

.PHONY: install uninstall deb

install:
	$(SYSTEM_PYTHON) packaging/install.py install --prefix $(PREFIX)

uninstall:
	$(SYSTEM_PYTHON) packaging/install.py uninstall --prefix $(PREFIX)

deb:
	$(SYSTEM_PYTHON) packaging/install.py deb --out $(DEB_OUT)
