"""RunMeta: one writer, one reader, old meta.json files of both routes, and damaged runs and state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tl_cli.cli import app
from tl_cli.errors import RunError
from tl_cli.runs.meta import SCHEMA, MetaError, RunMeta, WeightsRef
from tl_cli.runs.store import load_run

FIXTURES = Path(__file__).resolve().parent / "fixtures"
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
runner = CliRunner()


def tl(*args):
    return runner.invoke(app, [str(a) for a in args])


def colour_images(folder: Path) -> list[Path]:
    """The three images expected_predictions.json was made on (same pixels as tests' write_image, seed 7)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rgb in COLOURS.items():
        rng = np.random.default_rng(7)
        a = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 25, (32, 40, 3)), 0, 255).astype("uint8")
        Image.fromarray(a).save(folder / f"{name}.png", format="PNG")
        paths.append(folder / f"{name}.png")
    return paths


def old_run(dest: Path, route: str = "extract") -> Path:
    """A copy of a run written before the schema (see fixtures/README.md)."""
    shutil.copytree(FIXTURES / f"meta_v0_{route}", dest)
    (dest / "expected_predictions.json").unlink(missing_ok=True)
    if route == "finetune":  # the whole network: seeded weights of the recorded architecture
        import torch

        from tl_cli.backbones import create_backbone
        from tl_cli.backbones.wrapper import attach_head
        from tl_cli.runs.store import save_tensors

        torch.manual_seed(0)
        net = attach_head(create_backbone("lenet5", pretrained=False)[0], 3, 0.0)
        save_tensors(dest / "model.safetensors", net.state_dict())
    return dest


def test_old_extract_meta_loads_and_predicts_as_before(tmp_path):
    from tl_cli.inference.predict import Predictor

    run = load_run(old_run(tmp_path / "run"))
    m = run.meta
    assert (m.schema, m.route, m.kind, m.backbone, m.classes) == (0, "extract", "head", "lenet5", ("blue", "green", "red"))
    assert m.val_fraction == 0.2 and m.weights == WeightsRef("random-seed0", None, False)
    assert m.dataset.n_train == 26 and m.dataset.cache_key == "3b4d5135cdc5a1e7" and m.freeze is None
    assert m.preprocess.input_size == 32 and m.metrics["l2"] == 0.0001 and m.val_accuracy == 1.0
    expected = json.loads((FIXTURES / "meta_v0_extract" / "expected_predictions.json").read_text())
    paths = colour_images(tmp_path / "imgs")
    got = Predictor(run, device="cpu", engines_dir=None).predict(paths, topk=3)
    for p in got:
        want = expected[Path(p.path).name]
        assert p.labels == want["labels"]
        np.testing.assert_allclose(p.probs, want["probs"], rtol=1e-4, atol=1e-7)
    res = tl("info", run.dir, "--no-layers")
    assert res.exit_code == 0 and "extract" in res.output and "26 train / 10 val" in res.output, res.output


def test_old_finetune_meta_loads_and_predicts(tmp_path):
    import torch

    from tl_cli.data.preprocess import load_tensor
    from tl_cli.inference.load import build_from_run
    from tl_cli.inference.predict import Predictor

    run = load_run(old_run(tmp_path / "run", "finetune"))
    m = run.meta
    assert (m.schema, m.route, m.kind, m.freeze, m.layers, m.epochs, m.best_epoch) == (0, "finetune", "full", 2, 5, 2, 0)
    assert m.stop_reason == "epochs" and m.finished is True and m.val_fraction == 0.2
    assert m.precision == {"train": "float32", "validation": "float32"} and m.config["finetune"]["batch_size"] == 8
    paths = colour_images(tmp_path / "imgs")
    got = Predictor(run, device="cpu", engines_dir=None).predict(paths, topk=3)
    net = build_from_run(run)
    with torch.no_grad():  # reference: the network by hand, on the recorded preprocessing
        ref = net(torch.stack([load_tensor(p, m.preprocess) for p in paths])).softmax(-1).numpy()
    for p, r in zip(got, ref):
        assert p.labels == [m.classes[i] for i in np.argsort(-r, kind="stable")]
        np.testing.assert_allclose(p.probs, np.sort(r)[::-1], atol=1e-6)
    info = tl("info", run.dir, "--format", "json")
    assert info.exit_code == 0 and json.loads(info.stdout)["freeze"] == 2


def test_written_meta_has_a_schema_and_reads_back_the_same(image_folder):
    from tl_cli.features.extract import ExtractConfig
    from tl_cli.head.small_data import train_small_data

    res = train_small_data(image_folder, ExtractConfig(backbone="lenet5", pretrained=False, workers=0, val_fraction=0.3))
    raw = json.loads((res.run_dir / "meta.json").read_text())
    assert raw["schema"] == SCHEMA and raw["created"] and raw["versions"]["tl"]
    # Readable by older tl too: every key the pre-schema extract meta had is still there, same shape.
    old = json.loads((FIXTURES / "meta_v0_extract" / "meta.json").read_text())
    assert set(old) <= set(raw) and set(old["dataset"]) <= set(raw["dataset"]) and raw["val_fraction"] == 0.3
    meta = load_run(res.run_dir).meta
    assert meta == RunMeta.from_dict(raw) and meta.to_dict() == raw
    assert meta.val_fraction == 0.3 and meta.dataset.n_train + meta.dataset.n_val == 36
    assert meta.dataset.split_digest and len(meta.dataset.split_digest) == 16
    raw["dataset"]["from_a_later_tl"] = 1  # the dataset section only grows: a key not known here is left out
    assert RunMeta.from_dict(raw) == meta


def test_run_meta_is_validated():
    base = dict(route="extract", kind="head", classes=("a", "b"), backbone="lenet5")
    RunMeta(**base)
    for bad, words in [({"kind": "half"}, "kind"), ({"classes": ()}, "classes"), ({"classes": ("a", "a")}, "duplicate"),
                       ({"route": "fly"}, "route"), ({"val_fraction": 1.5}, "val_fraction"), ({"freeze": "2"}, "whole"),
                       ({"schema": SCHEMA + 1}, "newer"), ({"weights": WeightsRef("x", "w.pth")}, "absolute")]:
        with pytest.raises(MetaError, match=words):
            RunMeta(**{**base, **bad})
    good = RunMeta(**base).to_dict()
    with pytest.raises(MetaError, match="unknown keys colour"):
        RunMeta.from_dict({**good, "colour": 1})
    with pytest.raises(MetaError, match="JSON object"):
        RunMeta.from_dict([1, 2])
    with pytest.raises(MetaError, match="no list of classes"):
        RunMeta.from_dict({"backbone": "lenet5"})  # before the schema: classes and backbone are required
    assert isinstance(MetaError("x"), RunError)  # reported like every other run problem
