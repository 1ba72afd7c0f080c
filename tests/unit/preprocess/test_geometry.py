import itertools

import pytest
from qwen_vl_utils.vision_process import smart_resize as reference_smart_resize
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as vllm_resize

from serving.errors import ImageError
from serving.preprocess.geometry import budgeted_resize, smart_resize, visual_tokens

BOUNDS = [(256 * 28 * 28, 1280 * 28 * 28), (4 * 28 * 28, 256 * 28 * 28), (3136, 12845056)]
SIZES = [1, 27, 28, 29, 55, 56, 100, 224, 333, 640, 1000, 1080, 1536, 2048, 3000, 4000, 8000]


@pytest.mark.parametrize("min_pixels,max_pixels", BOUNDS)
def test_matches_qwen_vl_utils(min_pixels, max_pixels):
    checked = 0
    for h, w in itertools.product(SIZES, SIZES):
        if max(h, w) / min(h, w) > 200:
            continue
        ref = reference_smart_resize(h, w, 28, min_pixels=min_pixels, max_pixels=max_pixels)
        if 0 in ref:  # qwen-vl-utils can floor a side to 0; transformers clamps it to 28
            continue
        ours = smart_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels)
        assert ours == ref, (h, w)
        assert ours[0] % 28 == 0 and ours[1] % 28 == 0
        checked += 1
    assert checked > 200


def test_bounds_hold():
    h, w = smart_resize(3000, 4000, min_pixels=256 * 784, max_pixels=1280 * 784)
    assert h * w <= 1280 * 784 and (h, w) == (840, 1148)
    h, w = smart_resize(10, 10, min_pixels=256 * 784, max_pixels=1280 * 784)
    assert h * w >= 256 * 784


def test_extreme_aspect_ratio_rejected():
    with pytest.raises(ImageError, match="aspect ratio"):
        smart_resize(10, 2010, min_pixels=784, max_pixels=784 * 100)


def test_visual_tokens():
    assert visual_tokens(840, 1148) == 30 * 41


ENGINE = {"engine_min_pixels": 4 * 28 * 28, "engine_max_pixels": 256 * 28 * 28}
BUDGETS = [(4 * 784, 4 * 784), (4 * 784, 16 * 784), (64 * 784, 64 * 784), (16 * 784, 256 * 784),
           (4 * 784, 256 * 784)]


@pytest.mark.parametrize("min_pixels,max_pixels", BUDGETS)
def test_budgeted_size_is_one_vllms_processor_keeps(min_pixels, max_pixels):
    # vLLM's Qwen2-VL processor calls transformers' smart_resize with the deployment's bounds
    # (engine args' mm_processor_kwargs) on the pixels we send
    for h, w in itertools.product(SIZES[1:], SIZES[1:]):
        if max(h, w) / min(h, w) > 100:
            continue
        size = budgeted_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels, **ENGINE)
        assert vllm_resize(*size, min_pixels=ENGINE["engine_min_pixels"],
                           max_pixels=ENGINE["engine_max_pixels"]) == size, (h, w)


def test_budget_within_a_grid_step_of_the_engine_min_is_lifted_to_it():
    # 480x640 at exactly 4 tokens floors to 28x56 = 2 tokens; the engine would scale that up
    # to 56x84, so that is the size prepared (and counted in the prompt)
    assert smart_resize(480, 640, min_pixels=3136, max_pixels=3136) == (28, 56)
    assert budgeted_resize(480, 640, min_pixels=3136, max_pixels=3136, **ENGINE) == (56, 84)


def test_budget_equal_to_the_engine_bounds_is_smart_resize():
    for h, w in itertools.product(SIZES[3:], SIZES[3:]):
        if max(h, w) / min(h, w) <= 100:
            assert budgeted_resize(h, w, min_pixels=256 * 784, max_pixels=1280 * 784,
                                   engine_min_pixels=256 * 784, engine_max_pixels=1280 * 784
                                   ) == smart_resize(h, w, min_pixels=256 * 784,
                                                     max_pixels=1280 * 784)
