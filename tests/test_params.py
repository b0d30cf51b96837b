"""Full-size parameter counts on the meta device equal the paper's."""

import pytest

from s5_hf.hub.params import PAPER_MILLIONS, count_parameters, official_equivalent

# Exact totals of the official implementation built on CPU, incl. its unused parameters.
OFFICIAL = {
    ("vit-b", "single"): 103_158_289, ("vit-b", "multiple"): 160_402_206, ("vit-b", "shared"): 132_081_438,
    ("vit-l", "single"): 327_427_345, ("vit-l", "multiple"): 435_012_126, ("vit-l", "shared"): 359_496_222,
    ("vit-h", "single"): 663_383_057, ("vit-h", "multiple"): 824_451_358, ("vit-h", "shared"): 698_597_662,
}


@pytest.mark.parametrize("preset,variant", sorted(OFFICIAL))
def test_counts_equal_the_official_implementation(preset, variant):
    assert official_equivalent(preset, variant) == OFFICIAL[preset, variant]


@pytest.mark.parametrize("preset", ["vit-b", "vit-l", "vit-h"])
@pytest.mark.parametrize("variant", ["single", "multiple"])
def test_counts_are_within_0_1m_of_the_paper(preset, variant):
    assert abs(count_parameters(preset, variant) / 1e6 - PAPER_MILLIONS[preset][variant]) <= 0.1


def test_script_prints_the_table(capsys):
    from s5_hf.hub.params import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "160,402,206" in out and "vs four single models" in out
    assert main(["--preset", "vit-b"]) == 0
    out = capsys.readouterr().out
    assert "160,402,206" in out and "435,012,126" not in out


def test_help_prints_usage_not_the_table(capsys):
    from s5_hf.hub.params import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: s5-params") and "160,402,206" not in out

