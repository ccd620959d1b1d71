"""Recipes and their configs: what each recipe fixes, device defaults, flags."""

from __future__ import annotations

import pytest

from pytest_modelrules.training.recipes import CPU_DEFAULTS, RECIPES, make_config


def test_seed_and_fixed_differ_where_the_story_says():
    seed, fixed = make_config("seed", device="cpu"), make_config("fixed", device="cpu")
    assert (seed.flip, seed.sampler, seed.epochs) == (True, "shuffle", 10)
    assert (fixed.flip, fixed.sampler, fixed.epochs) == (False, "weighted", 3)
    assert seed.batch_size == fixed.batch_size == 64
    assert seed.key() != fixed.key()


def test_cpu_and_gpu_defaults():
    cpu = make_config("seed", device="cpu")
    assert cpu.image_size == CPU_DEFAULTS["image_size"] == 32
    assert (cpu.lr, cpu.momentum, cpu.schedule, cpu.steps) == (0.03, 0.9, "cosine", 600)
    assert cpu.crop_scale == (0.5, 1.0) and cpu.test_per_class == 50
    gpu = make_config("seed", device="cuda")
    assert (gpu.image_size, gpu.lr, gpu.momentum, gpu.steps) == (224, 0.001, 0.0, None)
    assert gpu.amp and gpu.channels_last and gpu.workers > 0
    assert gpu.crop_scale == (0.08, 1.0) and gpu.train_images == 39209


def test_overrides_and_key():
    a = make_config("fixed", device="cpu", lr=0.1, seed=3, crop_scale=[0.5, 1.0])
    assert (a.lr, a.seed, a.crop_scale, a.flip) == (0.1, 3, (0.5, 1.0), False)
    assert make_config("fixed", device="cpu", lr=None).lr == 0.03  # None = keep the default
    # where and how loudly a run happens does not change its key
    assert (
        make_config("seed", device="cpu", progress=False, workers=3).key()
        == make_config("seed", device="cpu").key()
    )
    assert (
        make_config("seed", device="cpu", seed=1).key() != make_config("seed", device="cpu").key()
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"recipe": "other"}, "unknown recipe"),
        ({"lrate": 1}, "unknown training parameter 'lrate'"),
        ({"sampler": "balanced"}, "sampler"),
        ({"schedule": "step"}, "schedule"),
        ({"steps": 2, "epochs": 3}, "steps >= epochs"),
    ],
)
def test_bad_configs_are_refused(kwargs, match):
    recipe = kwargs.pop("recipe", "seed")
    with pytest.raises(ValueError, match=match):
        make_config(recipe, device="cpu", **kwargs)


def test_transforms_follow_the_recipe():
    from torchvision import transforms as T

    from pytest_modelrules.training.job import transforms_for

    train_seed, eval_seed = transforms_for(make_config("seed", device="cpu"))
    train_fixed, _ = transforms_for(make_config("fixed", device="cpu"))
    kinds = lambda tf: [type(t) for t in tf.transforms]  # noqa: E731
    assert T.RandomHorizontalFlip in kinds(train_seed)
    assert T.RandomHorizontalFlip not in kinds(train_fixed)
    crop = train_seed.transforms[0]
    assert kinds(train_seed)[0] is T.RandomResizedCrop and crop.size == (32, 32)
    assert crop.scale == (0.5, 1.0)
    assert kinds(eval_seed)[:2] == [T.Resize, T.CenterCrop]
    assert eval_seed.transforms[0].size == 37  # 32 * 256 / 224, as 224 is to 256
    assert set(RECIPES) == {"seed", "fixed"}
