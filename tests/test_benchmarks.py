"""The benchmarks run (on tiny sizes here; real sizes are for `python -m hp3_core bench`).

Nothing about speed is asserted: only that each stack runs and that the measured quantities are
consistent (HP3 and the InstantID-like stack do more work than the bare UNet)."""
from __future__ import annotations

from harness.tiny_hp3 import tiny_hp3_config
from hp3_core.benchmarks import patch_bench

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, attention_head_dim=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def test_patch_bench_runs_every_stack_on_tiny_sizes():
    steps, cleanup = patch_bench.build("cpu", TINY_UNET, tiny_hp3_config("sd15"), latent=8, text_tokens=8)
    try:
        results = patch_bench.measure(steps, repeats=1)
        out = {k: fn() for k, fn in steps.items()}
    finally:
        cleanup()
    assert set(results) == {"bare", "hp3", "instantid_like"}
    assert results["hp3"]["gflops"] > results["bare"]["gflops"]
    assert results["instantid_like"]["gflops"] > results["bare"]["gflops"]
    assert all(v.shape == (2, 4, 8, 8) for v in out.values())
    assert not (out["hp3"] - out["bare"]).abs().max() == 0, "HP3 (random connector) changes the cond row"
    assert (out["hp3"][1] - out["bare"][1]).abs().max() == 0, "the uncond row is the bare UNet"


def test_report_prints_the_table_then_one_metric_line_each(capsys):
    from hp3_core.benchmarks.report import write_report
    write_report(["bench x: tiny", "  a  1.0"], {"ratio_hp3": 1.23456, "steps_per_s": 2}, digits=3)
    assert capsys.readouterr().out == "bench x: tiny\n  a  1.0\nratio_hp3: 1.235\nsteps_per_s: 2.000\n"
