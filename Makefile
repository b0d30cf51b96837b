# Set-up and the two README commands. `make quickstart` runs the S5 pipeline at toy scale on the bundled data;
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch. On machines whose pip does not find a CPU wheel locally, point pip at PyTorch's CPU
# index, e.g. `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`, to avoid a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Optional extras installed with the package: `test` (pytest), `geo` (rasterio: GeoTIFF inference and its test),
# `demo` (gradio: the Space app, which tests/test_demo.py launches on loopback) and `export` (onnx, onnxscript,
# onnxruntime: s5_hf.inference.export and its test).
EXTRAS ?= test,geo,demo,export

export HF_HUB_DISABLE_XET := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: quickstart test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(PY) -m s5_hf.quickstart --output_dir outputs/quickstart

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs
