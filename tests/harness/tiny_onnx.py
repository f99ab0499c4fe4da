"""Tiny ONNX face models in insightface's formats, built with ``onnx.helper`` (no torch export).

* :func:`write_tiny_arcface`: a recognition model shaped like ArcFace (``input.1`` float
  [N, 3, 112, 112] -> one output [N, 512]). insightface 2.1's ``model_zoo.get_model(path)`` routes
  it to ``ArcFaceONNX`` (fewer than 5 outputs, square input >= 112 and a multiple of 16).
  It is AveragePool 8x8 -> Flatten -> Gemm with seeded random weights: a random projection of a
  14x14 thumbnail, so it tells aligned crops apart by their coarse appearance only.
* :func:`write_tiny_scrfd`: a detector shaped like SCRFD with keypoints (9 outputs: scores,
  boxes, 5 keypoints at strides 8, 16, 32, two anchors per cell), routed to ``SCRFD``. It
  "detects" bright 32x32 cells: at stride 32 the score is the cell's mean brightness (0..1),
  strides 8 and 16 never fire. The box half-size is ``(1.5 - score) / 2`` strides, so a grey cell
  gives a bigger box (but a lower score) than a white one; keypoints sit at fixed offsets.
* :func:`write_tiny_pack`: ``<root>/models/<pack>/`` with the pack's recognizer file name.

Node names avoid the ``Sub``/``Mul`` prefixes that make ``ArcFaceONNX`` assume an MXNet export
with the normalisation inside the graph: these models get insightface's (x - 127.5) / 127.5.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ARCFACE_INPUT = "input.1"
EMBEDDING_DIM = 512
SCRFD_STRIDES = (8, 16, 32)
# Keypoint offsets from the anchor in strides (image-left eye, image-right eye, nose, mouth corners).
SCRFD_KPS = np.array([[-0.2, -0.15], [0.2, -0.15], [0.0, 0.05], [-0.15, 0.25], [0.15, 0.25]],
                     dtype=np.float32)


def write_tiny_arcface(path: str | Path, seed: int = 0, dynamic_size: bool = False) -> Path:
    """Write a seeded tiny ArcFace-format recognizer to ``path`` and return the path.

    ``dynamic_size`` declares the input's height and width symbolic (["None", 3, "h", "w"]);
    insightface's router cannot route such a file (it compares the size with ``>=``), so it
    exercises the plain-onnxruntime fallback. The weights depend only on ``seed``.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    pooled = 3 * (112 // 8) ** 2
    weight = (rng.standard_normal((pooled, EMBEDDING_DIM)) / np.sqrt(pooled)).astype(np.float32)
    bias = (0.01 * rng.standard_normal(EMBEDDING_DIM)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", [ARCFACE_INPUT], ["pool"], name="pool0",
                         kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten0", axis=1),
        helper.make_node("Gemm", ["flat", "fc_weight", "fc_bias"], ["683"], name="fc0"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info(ARCFACE_INPUT, TensorProto.FLOAT,
                                       ["None", 3, "h", "w"] if dynamic_size else ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", EMBEDDING_DIM])],
        initializer=[numpy_helper.from_array(weight, "fc_weight"),
                     numpy_helper.from_array(bias, "fc_bias")])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                   producer_name="hp3-tests"), path)


def write_tiny_scrfd(path: str | Path) -> Path:
    """Write a tiny SCRFD-format detector (see the module docstring) and return the path."""
    from onnx import TensorProto, helper, numpy_helper

    consts = {"shape_k1": np.array([-1, 1], dtype=np.int64), "one": np.float32(1.0),
              "half": np.float32(0.5), "one_half": np.float32(1.5), "zero": np.float32(0.0),
              "ones4": np.ones((1, 4), np.float32), "zeros10": np.zeros((1, 10), np.float32),
              "kps_offsets": SCRFD_KPS.reshape(1, 10)}
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["gray"], name="gray", axes=[1], keepdims=1)]

    def node(op: str, ins: list[str], out: str, **kw) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    outputs: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    for s in SCRFD_STRIDES:
        # insightface feeds (x - 127.5) / 128: the pooled grey level is -1 (black) .. 1 (white)
        pool = node("AveragePool", ["gray"], f"pool_{s}", kernel_shape=[s, s], strides=[s, s])
        cells = node("Reshape", [pool, "shape_k1"], f"cells_{s}")  # [h*w, 1], row-major
        pair = node("Concat", [cells, cells], f"pair_{s}", axis=1)  # two anchors per cell
        grey = node("Reshape", [pair, "shape_k1"], f"grey_{s}")  # [h*w*2, 1], anchor-minor
        if s == 32:
            score = node("Mul", [node("Add", [grey, "one"], f"shift_{s}"), "half"], f"score_{s}")
        else:
            score = node("Mul", [grey, "zero"], f"score_{s}")
        size = node("Mul", [node("Sub", ["one_half", score], f"inv_{s}"), "half"], f"size_{s}")
        outputs["score"].append(score)
        outputs["bbox"].append(node("MatMul", [size, "ones4"], f"bbox_{s}"))
        kzero = node("MatMul", [score, "zeros10"], f"kzero_{s}")
        outputs["kps"].append(node("Add", [kzero, "kps_offsets"], f"kps_{s}"))
    widths = {"score": 1, "bbox": 4, "kps": 10}
    value_infos = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"k{s}", widths[kind]])
                   for kind, names in outputs.items() for name, s in zip(names, SCRFD_STRIDES)]
    graph = helper.make_graph(
        nodes, "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        value_infos, initializer=inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                   producer_name="hp3-tests"), path)


def write_tiny_pack(root: str | Path, pack: str = "antelopev2", detector: bool = False,
                    seed: int = 0) -> Path:
    """``<root>/models/<pack>/<recognizer>`` (+ the detector file when ``detector``); returns
    ``root``, the insightface folder to give the analyzer."""
    from hp3_core.head_encoder.face_analysis import PACKS

    folder = Path(root) / "models" / pack
    write_tiny_arcface(folder / PACKS[pack]["recognizer"], seed=seed)
    if detector:
        write_tiny_scrfd(folder / PACKS[pack]["detector"])
    return Path(root)


def _save(model, path: str | Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
