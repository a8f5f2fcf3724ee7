"""Signal (DFT, STFT, windows, mel matrix), string, image (ImageDecoder, NonMaxSuppression) and
random-number converters: values against onnxruntime or numpy, gradients with gradcheck."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_builders import initializer, make_model, run_onnxruntime, single_node, value_info

import finetune as ft
import finetune.onnx.ops.random  # noqa: F401 - registers the random ops
from finetune.errors import AutogradError, OnnxImportError


def _run(model, *inputs):
    out = ft.onnx.load(model)(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    return [np.asarray(o._data) for o in outs]


def _same_as_onnxruntime(model, *inputs, rtol=1e-5, atol=1e-5):
    got, want = _run(model, *inputs), run_onnxruntime(model, *inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        if w.dtype.kind in "fc":
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(g, w)


def _typed_node(op, inputs, constants, outputs, opset, **attributes):
    """A one-node model whose outputs are declared ``{name: (element type, rank)}``: for ops
    whose onnx shape inference gives up (string ops, the real inverse DFT). A constant named
    "" is an omitted input."""
    constants = constants or {}
    node = helper.make_node(op, [*inputs, *constants], list(outputs), **attributes)
    graph_inputs = [
        value_info(k, v.shape, helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in inputs.items()
    ]
    graph_outputs = [
        value_info(name, [f"{name}{i}" for i in range(rank)], elem)
        for name, (elem, rank) in outputs.items()
    ]
    inits = [initializer(k, v) for k, v in constants.items() if k]
    return make_model([node], graph_inputs, graph_outputs, inits, opset=opset)


def _signal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- DFT and STFT ---------------------------------------------------------------------------------

DFT_CASES = {
    # name: (opset, input shape, constants, attributes)
    "real_v17": (17, (2, 8, 1), {}, {"axis": 1}),
    "complex_axis2_v17": (17, (2, 3, 6, 2), {}, {"axis": 2}),
    "onesided_v17": (17, (2, 9, 1), {}, {"axis": 1, "onesided": 1}),
    "inverse_v17": (17, (2, 8, 2), {}, {"axis": 1, "inverse": 1}),
    "padded_length_v17": (17, (2, 5, 1), {"n": np.int64(8)}, {"axis": 1}),
    "truncated_length_v17": (17, (2, 8, 2), {"n": np.int64(6)}, {"axis": 1}),
    "axis_input_v20": (20, (2, 4, 6, 1), {"_n": None, "axis": np.int64(1)}, {}),
    "default_axis_v20": (20, (2, 4, 6, 2), {}, {}),
    "negative_axis_v20": (20, (2, 4, 6, 1), {"n": np.int64(10), "axis": np.int64(-3)}, {}),
}


@pytest.mark.parametrize("name", DFT_CASES)
def test_dft_matches_onnxruntime(name):
    opset, shape, constants, attributes = DFT_CASES[name]
    x = _signal(*shape)
    model = single_node("DFT", {"x": x}, constants, opset=opset, **attributes)
    _same_as_onnxruntime(model, x, rtol=1e-4, atol=1e-4)


def test_dft_inverse_onesided_is_numpys_irfft():
    spectrum = _signal(2, 5, 2)
    model = single_node("DFT", {"x": spectrum}, opset=20, inverse=1, onesided=1)
    got = _run(model, spectrum)[0]
    want = np.fft.irfft(spectrum[..., 0] + 1j * spectrum[..., 1], n=8, axis=1)[..., None]
    assert got.dtype == np.float32 and got.shape == (2, 8, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


GRADIENT_CASES = {
    "real": ({"onesided": 0}, (2, 6, 1), None),
    "complex_inverse": ({"inverse": 1}, (2, 6, 2), None),
    "onesided_padded": ({"onesided": 1}, (2, 5, 1), 8),
    "truncated_complex": ({}, (2, 7, 2), 4),
    "irfft_even": ({"inverse": 1, "onesided": 1}, (2, 4, 2), 6),
    "irfft_odd": ({"inverse": 1, "onesided": 1}, (2, 4, 2), 7),
    "irfft_real_input": ({"inverse": 1, "onesided": 1}, (2, 5, 1), None),
}


@pytest.mark.parametrize("name", GRADIENT_CASES)
def test_dft_gradients_pass_gradcheck(name):
    attributes, shape, length = GRADIENT_CASES[name]
    x = _signal(*shape)
    constants = {} if length is None else {"n": np.int64(length)}
    rank_out = {"y": (TensorProto.FLOAT, 3)}
    net = ft.onnx.load(_typed_node("DFT", {"x": x}, constants, rank_out, 20, **attributes))
    leaf = ft.tensor(x.astype(np.float64), requires_grad=True)
    assert ft.autograd.gradcheck(lambda t: net(t), (leaf,))


def test_stft_matches_onnxruntime():
    x = _signal(2, 40, 1)
    window = np.hanning(16).astype(np.float32)
    with_window = single_node("STFT", {"x": x}, {"step": np.int64(5), "w": window}, opset=17)
    _same_as_onnxruntime(with_window, x, rtol=1e-4, atol=1e-4)
    two_sided = single_node(
        "STFT", {"x": x}, {"step": np.int64(7), "_w": None, "n": np.int64(10)}, opset=17, onesided=0
    )
    _same_as_onnxruntime(two_sided, x, rtol=1e-4, atol=1e-4)


def test_stft_gradients_reach_signal_and_window():
    x = _signal(1, 12, 1)
    window = np.hanning(6).astype(np.float32)
    model = single_node("STFT", {"x": x}, {"step": np.int64(3), "w": window}, opset=17)
    net = ft.onnx.load(model, freeze=False).double()
    leaf = ft.tensor(x.astype(np.float64), requires_grad=True)
    (weights,) = net.parameters()
    assert weights.shape == (6,)
    assert ft.autograd.gradcheck(lambda t, w: net(t), (leaf, weights))


# -- windows and the mel matrix -------------------------------------------------------------------


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_windows_match_onnxruntime(op, periodic, dtype):
    model = single_node(
        op, {}, {"n": np.int64(10)}, opset=17, periodic=periodic, output_datatype=dtype
    )
    _same_as_onnxruntime(model, rtol=1e-6, atol=1e-7)


def test_mel_weight_matrix_matches_onnxruntime():
    constants = {
        "bins": np.int64(10),
        "dft": np.int64(128),
        "rate": np.int64(16000),
        "low": np.float32(20),
        "high": np.float32(7600),
    }
    _same_as_onnxruntime(single_node("MelWeightMatrix", {}, constants, opset=17))


# -- strings -------------------------------------------------------------------------------------

WORDS = np.array([["the quick", "Brown  fox"], ["", "jumps over  the"]], dtype=object)


def test_string_concat_broadcasts_like_onnxruntime():
    suffix = np.array(["!", "?"], dtype=object)
    model = single_node("StringConcat", {"x": WORDS}, {"s": suffix}, opset=20)
    _same_as_onnxruntime(model, WORDS)


@pytest.mark.parametrize(
    "attributes", [{}, {"delimiter": " "}, {"delimiter": " ", "maxsplit": 1}, {"maxsplit": 1}]
)
def test_string_split_matches_onnxruntime(attributes):
    model = single_node("StringSplit", {"x": WORDS}, outputs=("y", "n"), opset=20, **attributes)
    _same_as_onnxruntime(model, WORDS)


@pytest.mark.parametrize(
    "attributes",
    [
        {"case_change_action": "LOWER", "stopwords": ["the"]},
        {"case_change_action": "UPPER", "stopwords": ["THE"], "is_case_sensitive": 1},
        {"case_change_action": "NONE", "stopwords": ["The", "a"]},
        {"case_change_action": "LOWER", "stopwords": ["the", "fox", "Été", "x"]},
    ],
)
def test_string_normalizer_matches_onnxruntime(attributes):
    words = np.array([["the", "Fox", "The", "Été", "x"]], dtype=object)
    out = {"y": (TensorProto.STRING, 2)}
    model = _typed_node("StringNormalizer", {"x": words}, {}, out, 10, locale="C", **attributes)
    _same_as_onnxruntime(model, words)


def test_string_normalizer_changes_every_letter_outside_the_c_locale():
    words = np.array(["Été", "Zoë"], dtype=object)
    out = {"y": (TensorProto.STRING, 1)}
    model = _typed_node("StringNormalizer", {"x": words}, {}, out, 10, case_change_action="UPPER")
    assert _run(model, words)[0].tolist() == ["ÉTÉ", "ZOË"]


def test_regex_full_match_matches_onnxruntime():
    emails = np.array(["a@b.com", "not an email", "x.y@z.org", "@b.com"], dtype=object)
    model = single_node(
        "RegexFullMatch", {"x": emails}, opset=20, pattern=r"[\w.]+@[\w]+\.(com|org)"
    )
    _same_as_onnxruntime(model, emails)


def test_regex_full_match_refuses_a_bad_pattern():
    x = np.array(["a"], dtype=object)
    with pytest.raises(OnnxImportError, match="RegexFullMatch: invalid pattern"):
        ft.onnx.load(single_node("RegexFullMatch", {"x": x}, opset=20, pattern="(a"))(x)


TFIDF = {
    "ngram_counts": [0, 4],
    "ngram_indexes": [0, 1, 2, 3, 4, 5, 6],
    "pool_int64s": [2, 3, 5, 4, 5, 6, 7, 8, 6, 7],  # unigrams 2 3 5 4, bigrams 56 78 67
}


@pytest.mark.parametrize(
    "mode, grams, skip, weights",
    [
        ("TF", (1, 2), 0, None),
        ("TF", (2, 2), 2, None),
        ("IDF", (1, 2), 1, [1.5, 2, 3, 1, 0.5, 4, 2]),
        ("TFIDF", (1, 1), 0, [1.5, 2, 3, 1, 0.5, 4, 2]),
        ("TFIDF", (1, 2), 3, None),
    ],
)
def test_tfidf_vectorizer_matches_onnxruntime(mode, grams, skip, weights):
    x = np.array([[1, 1, 3, 3, 3, 7, 8, 6, 7, 5, 6, 8], [2, 5, 6, 7, 8, 6, 7, 4, 5, 6, 7, 8]])
    x = x.astype(np.int32)
    attributes = dict(TFIDF, mode=mode, min_gram_length=grams[0], max_gram_length=grams[1])
    attributes["max_skip_count"] = skip
    if weights:
        attributes["weights"] = weights
    model = single_node("TfIdfVectorizer", {"x": x}, opset=9, free_batch=False, **attributes)
    _same_as_onnxruntime(model, x)


def test_tfidf_vectorizer_of_strings_matches_onnxruntime():
    x = np.array(["a", "b", "a", "c", "b", "a", "b"], dtype=object)
    model = single_node(
        "TfIdfVectorizer",
        {"x": x},
        opset=9,
        free_batch=False,
        mode="TF",
        min_gram_length=1,
        max_gram_length=2,
        max_skip_count=1,
        ngram_counts=[0, 2],
        ngram_indexes=[1, 0, 2],
        pool_strings=["a", "b", "a", "b"],
    )
    _same_as_onnxruntime(model, x)


# -- images --------------------------------------------------------------------------------------


def _encoded(pixels: np.ndarray, format: str) -> np.ndarray:  # noqa: A002
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


@pytest.mark.parametrize("format", ["PNG", "BMP"])
def test_image_decoder_returns_the_lossless_pixels(format):  # noqa: A002
    pixels = np.random.default_rng(0).integers(0, 255, size=(5, 7, 3), endpoint=True)
    pixels = pixels.astype(np.uint8)
    stream = _encoded(pixels, format)
    rgb = _run(single_node("ImageDecoder", {"x": stream}, opset=20), stream)[0]
    np.testing.assert_array_equal(rgb, pixels)
    bgr = _run(single_node("ImageDecoder", {"x": stream}, opset=20, pixel_format="BGR"), stream)
    np.testing.assert_array_equal(bgr[0], pixels[:, :, ::-1])
    gray = _run(
        single_node("ImageDecoder", {"x": stream}, opset=20, pixel_format="Grayscale"), stream
    )[0]
    # ITU-R 601-2 luma, as Pillow rounds it
    luma = (pixels.astype(np.int64) @ np.array([19595, 38470, 7471]) + 0x8000) >> 16
    assert gray.shape == (5, 7, 1) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray[:, :, 0], luma)


def test_image_decoder_gives_rgb_for_a_grayscale_file():
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    stream = _encoded(pixels, "PNG")
    rgb = _run(single_node("ImageDecoder", {"x": stream}, opset=20), stream)[0]
    np.testing.assert_array_equal(rgb, np.repeat(pixels[:, :, None], 3, axis=2))


def test_image_decoder_refuses_bytes_that_are_no_image():
    junk = np.frombuffer(b"certainly not a picture", dtype=np.uint8)
    with pytest.raises(OnnxImportError, match="ImageDecoder: the stream is not a readable image"):
        ft.onnx.load(single_node("ImageDecoder", {"x": junk}, opset=20))(junk)


# -- NonMaxSuppression ---------------------------------------------------------------------------


def _boxes(rng, batches, count, center):
    xy = rng.random((batches, count, 2)) * 10
    wh = rng.random((batches, count, 2)) * 4 + 0.5
    if center:
        return np.concatenate([xy, wh], axis=2).astype(np.float32)
    # y1 x1 y2 x2, with some boxes given corner-swapped
    boxes = np.concatenate([xy[..., ::-1], (xy + wh)[..., ::-1]], axis=2)
    boxes[:, ::3] = boxes[:, ::3][..., [2, 3, 0, 1]]
    return boxes.astype(np.float32)


def _nms_loop(boxes, scores, limit, iou_threshold, score_threshold, center):
    """The greedy algorithm one box at a time, as onnxruntime writes it."""

    def corners(b):
        if center:
            return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
        return min(b[1], b[3]), min(b[0], b[2]), max(b[1], b[3]), max(b[0], b[2])

    def iou(a, b):
        ax0, ay0, ax1, ay1 = corners(a)
        bx0, by0, bx1, by1 = corners(b)
        w, h = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
        if w <= 0 or h <= 0:
            return 0.0
        inter = w * h
        return inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter)

    out = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            order = sorted(
                (i for i in range(scores.shape[2]) if scores[b, c, i] > score_threshold),
                key=lambda i: (-scores[b, c, i], i),
            )
            kept = []
            for i in order:
                if len(kept) == limit:
                    break
                if all(iou(boxes[b, i], boxes[b, k]) <= iou_threshold for k in kept):
                    kept.append(i)
                    out.append((b, c, i))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("opset", [10, 11])
def test_non_max_suppression_matches_onnxruntime_and_a_plain_loop(center, opset):
    rng = np.random.default_rng(3 + center)
    boxes = _boxes(rng, 2, 30, center)
    scores = rng.random((2, 3, 30)).astype(np.float32)
    scores[0, 0, :4] = 0.75  # ties: the lower index first
    constants = {
        "limit": np.int64(6),
        "iou": np.float32(0.3),
        "floor": np.float32(0.2),
    }
    model = _typed_node(
        "NonMaxSuppression",
        {"boxes": boxes, "scores": scores},
        constants,
        {"y": (TensorProto.INT64, 2)},
        opset,
        center_point_box=center,
    )
    _same_as_onnxruntime(model, boxes, scores)
    got = _run(model, boxes, scores)[0]
    np.testing.assert_array_equal(got, _nms_loop(boxes, scores, 6, 0.3, 0.2, center))


def test_non_max_suppression_without_a_limit_selects_nothing():
    boxes = _boxes(np.random.default_rng(0), 1, 4, 0)
    scores = np.ones((1, 2, 4), np.float32)
    model = single_node(
        "NonMaxSuppression", {"boxes": boxes, "scores": scores}, opset=11, free_batch=False
    )
    got = _run(model, boxes, scores)[0]
    assert got.shape == (0, 3) and got.dtype == np.int64


# -- random numbers ------------------------------------------------------------------------------


def test_random_uniform_and_normal_follow_shape_dtype_range_and_seed():
    uniform = single_node(
        "RandomUniform", {}, opset=22, shape=[500, 4], low=-2.0, high=3.0, seed=5.0
    )
    a, b = _run(uniform)[0], _run(uniform)[0]
    assert a.shape == (500, 4) and a.dtype == np.float32
    assert a.min() >= -2 and a.max() < 3 and a.std() > 1
    np.testing.assert_array_equal(a, b)  # a seeded node repeats
    normal = single_node(
        "RandomNormal", {}, shape=[2000], mean=5.0, scale=0.5, dtype=TensorProto.DOUBLE
    )
    c = _run(normal)[0]
    assert c.dtype == np.float64 and abs(c.mean() - 5) < 0.1 and abs(c.std() - 0.5) < 0.05


def test_random_ops_without_seed_follow_manual_seed():
    x = np.zeros((3, 50), np.float32)
    model = single_node("RandomNormalLike", {"x": x}, opset=22)
    ft.manual_seed(11)
    first = _run(model, x)[0]
    ft.manual_seed(11)
    again = _run(model, x)[0]
    assert first.shape == (3, 50) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, _run(model, x)[0])


def test_random_like_ops_take_the_input_shape_and_give_no_gradient_path():
    x = np.zeros((4, 6), np.float64)
    model = single_node(
        "RandomUniformLike", {"x": x}, opset=22, dtype=TensorProto.FLOAT16, low=1.0, high=2.0
    )
    leaf = ft.tensor(x, requires_grad=True)
    out = ft.onnx.load(model)(leaf)
    assert out.shape == (4, 6) and out._data.dtype == np.float16
    assert 1 <= out._data.min() and out._data.max() <= 2
    assert not out.requires_grad  # noise does not depend on the input's values


def test_bernoulli_draws_zeros_and_ones_with_the_given_probability():
    p = np.tile(np.float32([0.0, 1.0, 0.3]), (4000, 1))
    model = single_node("Bernoulli", {"p": p}, opset=22, seed=3.0)
    draws = _run(model, p)[0]
    assert draws.dtype == np.float32 and set(np.unique(draws)) <= {0.0, 1.0}
    assert draws[:, 0].sum() == 0 and draws[:, 1].sum() == 4000
    assert abs(draws[:, 2].mean() - 0.3) < 0.03
    as_int = single_node("Bernoulli", {"p": p}, opset=15, dtype=TensorProto.INT64)
    assert _run(as_int, p)[0].dtype == np.int64
    with pytest.raises(AutogradError, match="Bernoulli"):
        ft.onnx.load(model)(ft.tensor(p, requires_grad=True)).sum().backward()


def test_multinomial_samples_classes_by_their_log_probabilities():
    logits = np.log(np.float32([[0.1, 0.6, 0.3], [1.0, 1e-9, 1e-9]]))
    model = single_node("Multinomial", {"x": logits}, opset=7, sample_size=5000, seed=1.0)
    draws = _run(model, logits)[0]
    assert draws.shape == (2, 5000) and draws.dtype == np.int32
    counts = np.bincount(draws[0], minlength=3) / 5000
    np.testing.assert_allclose(counts, [0.1, 0.6, 0.3], atol=0.03)
    assert (draws[1] == 0).all()
    wide = single_node("Multinomial", {"x": logits}, opset=22, dtype=TensorProto.INT64)
    assert _run(wide, logits)[0].dtype == np.int64


@pytest.mark.parametrize("opset", [17, 20])
def test_stft_round_trips_through_the_exporter(tmp_path, opset):
    """An imported STFT is written back as standard nodes (DFT among them); onnxruntime agrees."""
    x = _signal(2, 24, 1)
    window = np.hamming(8).astype(np.float32)
    model = ft.onnx.load(
        single_node("STFT", {"x": x}, {"step": np.int64(4), "w": window}, opset=17)
    )
    path = tmp_path / "stft.onnx"
    ft.onnx.export(model, ft.from_numpy(x), path, opset_version=opset)
    (theirs,) = run_onnxruntime(onnx.load(path), x)
    np.testing.assert_allclose(theirs, model(ft.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_dft_refuses_the_real_imaginary_axis():
    x = _signal(2, 6, 2)
    model = _typed_node("DFT", {"x": x}, {}, {"y": (TensorProto.FLOAT, 3)}, 17, axis=2)
    with pytest.raises(OnnxImportError, match="DFT: axis 2 is the real/imaginary dimension"):
        ft.onnx.load(model)(x)


def test_stft_refuses_frames_longer_than_the_signal():
    x = _signal(1, 8, 1)
    constants = {"step": np.int64(2), "": None, "n": np.int64(9)}
    model = _typed_node("STFT", {"x": x}, constants, {"y": (TensorProto.FLOAT, 4)}, 17)
    with pytest.raises(OnnxImportError, match="STFT: frame_step 2 must be positive and frame_le"):
        ft.onnx.load(model)(x)
