"""`freebies fuse` and deploy checkpoints: ACNet + conv/BN folding end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from freebies import checkpoint, config, deploy, engine
from helpers import run_cli, small


def tiny_run(data: Path, out: Path, *extra: str) -> list[str]:
    return small(data, out, "--epochs", "1", "--batch-size", "32", *extra)


@pytest.fixture
def acnet_run(idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    out = tmp_path / "acnet"
    rc, _, err = run_cli(
        capsys,
        *tiny_run(
            idx_dir, out, "--set", "model.acnet=true", "--set", "model.acnet_side_gamma=0.333"
        ),
    )
    assert rc == 0, err
    return out


def test_fuse_writes_a_plain_deploy_checkpoint_that_evaluates_the_same(acnet_run, capsys):
    deployed = acnet_run / "deploy.pt"
    rc, out, err = run_cli(capsys, "fuse", str(acnet_run / "last.pt"), "-o", str(deployed))
    assert rc == 0, err
    assert "folded 19 ACNet block(s) and 19 conv+BN pair(s)" in out
    # a plain ResNet-20 with its 19 BNs folded: 269,434 - (2 - 1) * (16 * 7 + 32 * 6 + 64 * 6)
    assert "| deployed (fused) | 268,746 |" in out
    ckpt = torch.load(deployed, weights_only=True)
    assert ckpt["deploy"] is True and ckpt["config"]["model"]["acnet"] is True
    assert all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())
    assert ckpt["fuse_report"]["max_abs_diff"] <= 1e-4

    rc, trained, _ = run_cli(capsys, "eval", str(acnet_run / "last.pt"))
    rc2, fused, _ = run_cli(capsys, "eval", str(deployed))
    assert rc == rc2 == 0
    a, b = json.loads(trained), json.loads(fused)
    assert a["test_acc"] == b["test_acc"]
    assert a["test_nll"] == pytest.approx(b["test_nll"], abs=1e-5)


def test_fused_acnet_has_the_plain_structure(acnet_run):
    ckpt = checkpoint.load(acnet_run / "last.pt")
    model = deploy.load_model(ckpt)
    fused, counts = deploy.fuse_and_check(
        model, config.from_dict(ckpt.config), torch.randn(8, 1, 28, 28), 10
    )
    plain = deploy.plain_fused(config.from_dict(ckpt.config), 10, 1)
    assert [(n, type(m)) for n, m in fused.named_modules()] == [
        (n, type(m)) for n, m in plain.named_modules()
    ]
    assert counts["params"]["fused"] == counts["params"]["plain"] == 268_746
    assert counts["macs"]["fused"] == counts["macs"]["plain"] < counts["macs"]["unfused"]


def test_plain_model_is_folded_and_says_no_acb(idx_dir, tmp_path, capsys):
    out = tmp_path / "plain"
    assert run_cli(capsys, *tiny_run(idx_dir, out))[0] == 0
    rc, stdout, _ = run_cli(capsys, "fuse", str(out / "last.pt"), "-o", str(tmp_path / "d.pt"))
    assert rc == 0
    assert "no ACNet block found" in stdout and "19 conv+BN pair(s)" in stdout


def test_existing_output_is_refused_and_kept(acnet_run, capsys):
    target = acnet_run / "deploy.pt"
    target.write_text("precious")
    rc, _, err = run_cli(capsys, "fuse", str(acnet_run / "last.pt"), "-o", str(target))
    assert rc == 2 and "already exists" in err
    assert target.read_text() == "precious"


def test_a_wrong_fusion_is_refused_before_writing(acnet_run, capsys, monkeypatch):
    real = deploy.fuse_model

    def broken(model: nn.Module) -> tuple[nn.Module, dict]:
        fused, counts = real(model)
        with torch.no_grad():
            fused.fc.bias += 0.01
        return fused, counts

    monkeypatch.setattr(deploy, "fuse_model", broken)
    target = acnet_run / "deploy.pt"
    rc, _, err = run_cli(capsys, "fuse", str(acnet_run / "last.pt"), "-o", str(target))
    assert rc == 2 and "refusing to write" in err
    assert not target.exists()


def test_torch_export_matches_on_any_batch(acnet_run, capsys):
    """torch.export (not the deprecated torch.jit): a dynamic batch, the eager model's logits."""
    target = acnet_run / "deploy.pt"
    rc, out, err = run_cli(
        capsys, "fuse", str(acnet_run / "last.pt"), "-o", str(target), "--export", "torch"
    )
    assert rc == 0, err
    assert "deploy.pt2: outputs within" in out
    program = torch.export.load(str(acnet_run / "deploy.pt2")).module()
    model = deploy.load_model(checkpoint.load(target))
    for n in (1, 3):
        x = torch.randn(n, 1, 28, 28)
        torch.testing.assert_close(program(x), model(x), atol=1e-5, rtol=0)


def test_acnet_run_resumes_after_an_interrupt_and_fuses(idx_dir, tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real = engine.any_rank

    def stop_at_step_5(flag: bool, device: torch.device) -> bool:
        calls["n"] += 1
        return real(flag, device) or calls["n"] == 5

    out = tmp_path / "run"
    args = tiny_run(idx_dir, out, "--set", "model.acnet=true", "--epochs", "2")
    monkeypatch.setattr(engine, "any_rank", stop_at_step_5)
    rc, _, err = run_cli(capsys, *args)
    assert rc == 130 and "--resume" in err
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 5
    monkeypatch.setattr(engine, "any_rank", real)
    assert run_cli(capsys, "train", "--resume", str(out))[0] == 0
    ref = tmp_path / "ref"
    assert (
        run_cli(capsys, *tiny_run(idx_dir, ref, "--set", "model.acnet=true", "--epochs", "2"))[0]
        == 0
    )
    a = torch.load(out / "last.pt", weights_only=True)["model"]
    b = torch.load(ref / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rc, _, err = run_cli(capsys, "fuse", str(out / "last.pt"), "-o", str(tmp_path / "d.pt"))
    assert rc == 0, err


def test_count_macs_matches_the_formula():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 5 * 4, 10)
    )
    x = torch.randn(2, 3, 9, 7)  # conv output 5 x 4
    assert deploy.count_macs(model, x) == 5 * 4 * 8 * 3 * 9 + 160 * 10


class FunctionalHead(nn.Module):
    """Convs called as F.conv2d on a module's weight, and a grouped conv: forward hooks on
    nn.Conv2d never saw the functional ones."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4, 3, 3))
        self.grouped = nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.conv2d(x, self.weight, padding=1)  # 6 x 8 x 10 out
        y = torch.nn.functional.interpolate(self.grouped(y), scale_factor=2)  # not counted
        return torch.nn.functional.conv2d(y, self.weight[:, :1].repeat(1, 6, 1, 1))


def test_count_macs_counts_functional_convs_and_groups():
    x = torch.randn(3, 4, 8, 10)
    # per image: F.conv2d 8*10 outputs x 6 channels x (4 * 3 * 3) inputs; the grouped conv
    # 8*10 x 6 x (6 / 3 * 9); the second F.conv2d on 16 x 20: 14*18 x 6 x (6 * 9).
    expected = 8 * 10 * 6 * 36 + 8 * 10 * 6 * 18 + 14 * 18 * 6 * 54
    assert deploy.count_macs(FunctionalHead(), x) == expected


def test_onnx_export_matches_in_onnxruntime(acnet_run, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    target = acnet_run / "deploy.pt"
    rc, _, err = run_cli(
        capsys, "fuse", str(acnet_run / "last.pt"), "-o", str(target), "--export", "onnx"
    )
    assert rc == 0, err
    graph = onnx.load(str(acnet_run / "deploy.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops
    x = torch.randn(5, 1, 28, 28)
    session = ort.InferenceSession(str(acnet_run / "deploy.onnx"))
    (logits,) = session.run(None, {"images": x.numpy()})
    model = deploy.load_model(checkpoint.load(target))
    torch.testing.assert_close(torch.from_numpy(logits), model(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("model", "norm"), [("wrn-10-1", "bn"), ("resnet20", "gn")])
def test_preact_and_groupnorm_acnet_models_fuse(idx_dir, tmp_path, capsys, model, norm):
    out = tmp_path / "run"
    rc, _, err = run_cli(
        capsys,
        *tiny_run(
            idx_dir,
            out,
            "--model",
            model,
            "--set",
            f"model.norm={norm}",
            "--set",
            "model.acnet=true",
            "--set",
            "model.zero_init_residual=true",
        ),
    )
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "fuse", str(out / "last.pt"), "-o", str(tmp_path / "d.pt"))
    assert rc == 0, err
    rc, trained, _ = run_cli(capsys, "eval", str(out / "last.pt"))
    rc2, fused, _ = run_cli(capsys, "eval", str(tmp_path / "d.pt"))
    assert rc == rc2 == 0
    assert json.loads(trained)["test_acc"] == json.loads(fused)["test_acc"]
