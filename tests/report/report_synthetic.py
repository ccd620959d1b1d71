"""Small synthetic runs with the tensor names of a PyTorch SageMaker Debugger run, written with
RunWriter: what the report's tests (and docs/images) draw when the fixture lacks a tensor
(model inputs, gradients, stored reductions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pytest_modelrules.store.names import compute_reduction, reduction_tensor_name
from pytest_modelrules.store.writer import RunWriter

GTSRB_NAMES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)",
    "Speed limit (60km/h)", "Speed limit (70km/h)", "Speed limit (80km/h)",
    "End of speed limit (80km/h)", "Speed limit (100km/h)", "Speed limit (120km/h)",
    "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution",
    "Dangerous curve to the left", "Dangerous curve to the right", "Double curve", "Bumpy road",
    "Slippery road", "Road narrows on the right", "Road work", "Traffic signals", "Pedestrians",
    "Children crossing", "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing",
    "End of all speed and passing limits", "Turn right ahead", "Turn left ahead", "Ahead only",
    "Go straight or right", "Go straight or left", "Keep right", "Keep left",
    "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]  # fmt: skip
GTSRB_COUNTS = np.array(
    [210, 2220, 2250, 1410, 1980, 1860, 420, 1440, 1410, 1470, 2010, 1320, 2100, 2160, 780, 630,
     420, 1110, 1200, 210, 360, 330, 390, 510, 270, 1500, 600, 240, 540, 270, 450, 780, 240, 689,
     420, 1200, 390, 210, 2070, 300, 360, 240, 240]
)  # fmt: skip
NUM_CLASSES = 43
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def sign_image(cls: int, size: int = 32) -> np.ndarray:
    """A toy traffic sign (HWC in [0, 1]): a disc whose colour depends on the class, with a
    bar slanting left or right by class parity (so mirror pairs look mirrored)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    img = np.full((size, size, 3), 0.85)
    hue = cls / NUM_CLASSES
    color = np.array([0.5 + 0.5 * np.cos(6.28 * hue), 0.5 + 0.5 * np.cos(6.28 * (hue + 0.33)),
                      0.5 + 0.5 * np.cos(6.28 * (hue + 0.66))])  # fmt: skip
    disc = xx**2 + yy**2 < 0.8
    img[disc] = color
    slope = 1 if cls % 2 else -1
    bar = (np.abs(xx - slope * yy * 0.6) < 0.12) & disc
    img[bar] = 0.05
    return img


def template_image(cls: int, size: int = 32) -> np.ndarray:
    """The project's clean GTSRB-like sign template of a class on grey (HWC in [0, 1]); slow
    on first use (the templates are drawn), so only docs/images use it."""
    from pytest_modelrules.datasets.signs import templates

    rgba = templates(size)[cls].astype(np.float64)
    return rgba[..., :3] * rgba[..., 3:] + 0.6 * (1 - rgba[..., 3:])


def write_demo_run(
    path: Path,
    *,
    seed: int = 0,
    epochs: int = 3,
    train_steps: int = 8,
    eval_steps: int = 3,
    batch: int = 32,
    balanced: bool = False,
    flip_confusion: float = 0.6,
    images: bool = True,
    name_metadata: bool = True,
    image_fn=sign_image,
) -> Path:
    """Write a GTSRB-like run: loss, labels, logits (19 <-> 20 confused in EVAL), model
    inputs at EVAL steps (normalised with MEAN/STD, stored in the metadata), two ReLU layers
    (one as the positive_fraction reduction only), gradients (one as the l2 reduction only)."""
    rng = np.random.default_rng(seed)
    probs = np.ones(NUM_CLASSES) / NUM_CLASSES if balanced else GTSRB_COUNTS / GTSRB_COUNTS.sum()
    meta = {"normalize": {"mean": list(MEAN), "std": list(STD)}}
    if name_metadata:
        meta["class_names"] = GTSRB_NAMES
    step = 0
    total_train = epochs * train_steps
    with RunWriter(path, metadata=meta) as w:
        for _epoch in range(epochs):
            for mode, n in (("TRAIN", train_steps), ("EVAL", eval_steps)):
                for _ in range(n):
                    progress = min(1.0, step / max(1, total_train + epochs * eval_steps - 1))
                    labels = rng.choice(NUM_CLASSES, size=batch, p=probs)
                    if mode == "EVAL":
                        labels[:4] = [19, 20, 19, 20]
                    acc = 0.2 + 0.75 * progress
                    preds = np.where(
                        rng.random(batch) < acc, labels, rng.integers(0, NUM_CLASSES, batch)
                    )
                    if mode == "EVAL":
                        flip = np.isin(labels, (19, 20)) & (rng.random(batch) < flip_confusion)
                        flip[:2] = True
                        preds = np.where(flip, 39 - labels, preds)
                    logits = rng.normal(0, 1, (batch, NUM_CLASSES)).astype(np.float32)
                    logits[np.arange(batch), preds] += 4.0
                    loss = np.float32(2.0 * np.exp(-3 * progress) + 0.3 + 0.05 * rng.random())
                    w.write("CrossEntropyLoss_output_0", loss, step, mode)
                    w.write("CrossEntropyLoss_input_0", logits, step, mode)
                    w.write("CrossEntropyLoss_input_1", labels.astype(np.int64), step, mode)
                    if mode == "EVAL" and images:
                        pix = np.stack([image_fn(int(c)) for c in labels])  # N H W C
                        norm = (pix - np.array(MEAN)) / np.array(STD)
                        w.write(
                            "ResNet_input_0",
                            np.moveaxis(norm, -1, 1).astype(np.float32),
                            step,
                            mode,
                        )
                    if mode == "TRAIN":
                        l1 = rng.normal(0.3, 1, (batch, 64)).astype(np.float32)
                        l1[:, : int(64 * 0.1 * progress)] = -1.0
                        w.write("layer1.relu_output_0", np.maximum(l1, 0), step, mode)
                        l2 = rng.normal(0.3, 1, (batch, 32)).astype(np.float32)
                        l2[:, : int(32 * (0.1 + 0.7 * progress))] = -1.0
                        pf = compute_reduction(np.maximum(l2, 0), "positive_fraction")
                        w.write(
                            reduction_tensor_name("layer2.relu_output_0", "positive_fraction"),
                            pf,
                            step,
                            mode,
                        )
                        g1 = rng.normal(0, 0.1 * np.exp(-4 * progress), (16, 3)).astype(np.float32)
                        w.write("gradient/conv1.weight", g1, step, mode)
                        g2 = rng.normal(0, 0.05, (43, 8)).astype(np.float32)
                        w.write(
                            reduction_tensor_name("gradient/fc.weight", "l2"),
                            compute_reduction(g2, "l2"),
                            step,
                            mode,
                        )
                    step += 1
        w.set_collections({"losses": {"tensor_names": ["CrossEntropyLoss_output_0"]}})
    return path


#: each step of write_out_of_range_run: labels over 5 logits columns, three of them no class
#: (PyTorch's ignore_index -100, a -1 "unknown", a 7 that no logit scores), and the predictions
OUT_OF_RANGE_LABELS = np.array([0, 1, 2, 3, 4, 4, -100, -1, 7, 1])
OUT_OF_RANGE_PREDS = np.array([0, 1, 2, 3, 3, 4, 0, 4, 1, 2])


def write_out_of_range_run(path: Path, *, steps: int = 2, class_names: bool = False) -> Path:
    """A 5-class run whose labels hold -100, -1 and 7 (OUT_OF_RANGE_LABELS at every TRAIN and
    EVAL step, logits scoring OUT_OF_RANGE_PREDS, normalised model inputs at EVAL steps)."""
    meta: dict = {"normalize": {"mean": list(MEAN), "std": list(STD)}}
    if class_names:
        meta["class_names"] = ["zero", "one", "two", "three", "four"]
    logits = np.eye(5, dtype=np.float32)[OUT_OF_RANGE_PREDS] * 4.0
    pix = np.stack([sign_image(max(0, int(c)) % 5) for c in OUT_OF_RANGE_LABELS])
    images = np.moveaxis((pix - np.array(MEAN)) / np.array(STD), -1, 1).astype(np.float32)
    step = 0
    with RunWriter(path, metadata=meta) as w:
        for mode in ("TRAIN", "EVAL"):
            for _ in range(steps):
                w.write("CrossEntropyLoss_output_0", np.float32(1.0 / (step + 1)), step, mode)
                w.write("CrossEntropyLoss_input_0", logits, step, mode)
                w.write("CrossEntropyLoss_input_1", OUT_OF_RANGE_LABELS, step, mode)
                if mode == "EVAL":
                    w.write("ResNet_input_0", images, step, mode)
                step += 1
    return path


def render_docs_images(out_dir: Path) -> list[Path]:
    """docs/images/report_*.png: label counts of the seed-like run against the fixed run, and
    the gallery of its mistakes (signs drawn by pytest_modelrules.datasets)."""
    import tempfile

    from pytest_modelrules.report import plots

    with tempfile.TemporaryDirectory() as tmp:
        seed = write_demo_run(Path(tmp) / "seed_run", image_fn=lambda c: template_image(c, 64))
        fixed = write_demo_run(
            Path(tmp) / "fixed_run", seed=1, balanced=True, flip_confusion=0.0, images=False
        )
        counts = out_dir / "report_label_counts.png"
        gallery = out_dir / "report_misclassified.png"
        plots.plot_label_counts(seed, baseline=fixed, path=counts)
        plots.plot_misclassified(seed, max_images=8, path=gallery)
    return [counts, gallery]


if __name__ == "__main__":  # .venv/bin/python tests/report/report_synthetic.py
    for written in render_docs_images(Path(__file__).resolve().parents[2] / "docs" / "images"):
        print(written)
