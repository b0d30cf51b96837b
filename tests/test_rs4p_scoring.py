"""RS4P chunk scoring (rs4p/scoring.py): one row per image, failures recorded with their reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from s5_hf.rs4p import ChunkScorer, RawImage, ScoringOptions


def test_chunk_scorer_keeps_one_row_per_image_and_records_failures(rs4p_model, encode_image, random_image):
    model = rs4p_model()
    size = model.config.image_size
    forward = model.forward

    def first_image_nan(pixel_values, **kwargs):  # the model breaks on the first image of each batch
        output = forward(pixel_values, **kwargs)
        output.logits[0] = float("nan")
        return output

    model.forward = first_image_nan
    rng = np.random.default_rng(0)
    good = [encode_image(random_image(rng)) for _ in range(3)]
    images = [RawImage("a", "s1", good[0]), RawImage("b", "s1", None, "unreadable file: gone"),
              RawImage("c", "s2", b"garbage"), RawImage("d", "s2", good[1]), RawImage("e", "s2", good[2])]
    table = ChunkScorer(model, ScoringOptions(image_size=size, batch_size=8)).score(images).to_pylist()
    assert [r["id"] for r in table] == ["a", "b", "c", "d", "e"]
    assert "NaN" in table[0]["error"] and table[1]["error"] == "unreadable file: gone"
    assert table[2]["error"].startswith("cannot decode image: UnidentifiedImageError")
    assert "0x" not in table[2]["error"]  # reproducible reasons: no memory addresses
    for row in table[:3]:
        assert row["entropy"] is None and row["feature"] is None and row["pseudo_label"] is None
    for row in table[3:]:
        assert row["error"] is None and len(row["feature"]) == 32 and sum(row["class_counts"]) == size**2
        assert np.asarray(Image.open(io.BytesIO(row["pseudo_label"]))).shape == (size, size)
        assert np.linalg.norm(np.asarray(row["feature"], dtype=np.float32)) == pytest.approx(1.0, abs=1e-2)
