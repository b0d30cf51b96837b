"""Test-wide settings: nothing may reach the network; uploads to the loopback Hub must not use Xet."""

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# datasets sleeps SLEEP_TIME_ON_THREADS_SHUTDOWN (5 s) each time a Parquet stream ends, to let PyArrow's reader
# threads wind down; the tests' tiny streams end every few batches. A short pause keeps that courtesy.
import datasets  # noqa: E402

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.2
