"""Head encoder pieces: CLIP vision features, the head-token decoder, the head-features file."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from harness.needs import installed
from harness.tiny_clip import TINY_CLIP as HARNESS_TINY_CLIP
from harness.tiny_hp3 import tiny_hp3_config, tiny_state_dict
from hp3_core.config import HeadEncoderConfig
from hp3_core.errors import HP3Error, MissingModelFileError
from hp3_core.head_encoder.clip_vision import CLIP_MEAN, CLIP_STD, ClipVisionEncoder, clip_preprocess
from hp3_core.head_encoder.features import HeadFeatures
from hp3_core.head_encoder.token_decoder import ClipWidthMismatchError, HeadTokenDecoder, check_clip_width

transformers = installed("transformers", "the CLIP vision encoder is a transformers model")

TINY_CLIP = {k: v for k, v in HARNESS_TINY_CLIP.items() if k != "projection_dim"}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIP vision model (50 tokens x 48) saved with save_pretrained; (folder, model)."""
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY_CLIP)).eval()
    folder = tmp_path_factory.mktemp("clip") / "tiny_clip_vision"
    model.save_pretrained(folder)
    return folder, model


def rand_images(b, h, w, seed=0):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


def numpy_preprocess(images: np.ndarray) -> np.ndarray:
    """[B, 224, 224, 3] 0..1 -> normalised [B, 3, 224, 224], written independently in numpy."""
    # 8-bit rounding in float32 like the images (half to even, as torch.round), then float64.
    x = np.round(np.clip(images.astype(np.float32) * np.float32(255), 0, 255)).astype(np.float64) / 255.0
    x = (x - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    return x.transpose(0, 3, 1, 2)


def penultimate_by_hand(model, pixels: torch.Tensor) -> torch.Tensor:
    """Embeddings, pre-LayerNorm, then every encoder layer but the last."""
    with torch.no_grad():
        x = model.pre_layrnorm(model.embeddings(pixels))
        for layer in model.encoder.layers[:-1]:
            x = layer(x, None)
    return x


# -- CLIP vision ---------------------------------------------------------------------------------
def test_encode_returns_the_penultimate_hidden_states(tiny_clip):
    folder, model = tiny_clip
    enc = ClipVisionEncoder.from_local(folder)
    assert enc.width == 48 and enc.num_tokens == 50 and enc.image_size == 224
    images = rand_images(3, 224, 224)
    out = enc.encode(images, batch_size=2)
    assert out.shape == (3, 50, 48) and out.dtype == torch.float32
    pixels = torch.from_numpy(numpy_preprocess(images.numpy())).float()
    expected = penultimate_by_hand(model, pixels)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Not the last layer's output.
    with torch.no_grad():
        last = model(pixel_values=pixels).last_hidden_state
    assert (out - last).abs().max() > 1e-2
    # A bf16 model runs in bf16 and still returns float32.
    half = ClipVisionEncoder.from_local(folder, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    out_half = half.encode(images)
    assert out_half.dtype == torch.float32 and (out_half - out).abs().max() < 0.1
    # uint8 numpy images are accepted too.
    u8 = (images.numpy() * 255 + 0.5).astype(np.uint8)
    torch.testing.assert_close(enc.encode(u8), enc.encode(torch.from_numpy(u8).float() / 255))


def test_preprocess_equals_numpy_and_pil():
    # Already 224 x 224: no resize, only 8-bit rounding and normalisation.
    images = rand_images(2, 224, 224, seed=1)
    out = clip_preprocess(images)
    assert out.shape == (2, 3, 224, 224)
    np.testing.assert_allclose(out.numpy(), numpy_preprocess(images.numpy()), atol=1e-5)
    # Shortest side already 224: the centre 224 columns, (320 - 224) // 2 = 48 from the left.
    wide = rand_images(1, 224, 320, seed=2)
    np.testing.assert_allclose(clip_preprocess(wide).numpy(),
                               numpy_preprocess(wide[:, :, 48:272].numpy()), atol=1e-5)
    # Larger, portrait: shortest side to 224 (bicubic, antialiased = PIL's bicubic), centre crop.
    tall = rand_images(1, 600, 448, seed=3)  # -> 300 x 224, crop rows 38..262
    resized = np.stack([np.asarray(Image.fromarray(tall[0, :, :, c].numpy(), mode="F")
                                   .resize((224, 300), Image.BICUBIC)) for c in range(3)], axis=-1)
    expected = numpy_preprocess(resized[None, 38:262])
    got = clip_preprocess(tall).numpy()
    assert np.abs(got - expected).max() <= 1.01 / 255 / min(CLIP_STD)   # one 8-bit step at most
    assert (np.abs(got - expected) < 1e-5).mean() > 0.999
    # Not stretched: crop=False squashes to 224 x 224 instead and differs.
    assert np.abs(clip_preprocess(tall, crop=False).numpy() - got).max() > 0.1


def test_single_safetensors_file_and_loading_errors(tiny_clip, tmp_path):
    folder, model = tiny_clip
    # ComfyUI's clip_vision layout: one file, "vision_model." keys, optional projection.
    sd = {f"vision_model.{k}": v.contiguous() for k, v in model.state_dict().items()
          if k != "embeddings.position_ids"}
    sd["visual_projection.weight"] = torch.randn(16, 48)
    single = tmp_path / "tiny_clip.safetensors"
    save_file(sd, str(single))
    # 48 wide is no known architecture: the config must be given (or put beside it as JSON).
    with pytest.raises(HP3Error, match="tiny_clip.json"):
        ClipVisionEncoder.from_local(single)
    enc = ClipVisionEncoder.from_local(single, config=transformers.CLIPVisionConfig(**TINY_CLIP))
    images = rand_images(2, 224, 224, seed=4)
    ref = ClipVisionEncoder(model).encode(images)
    torch.testing.assert_close(enc.encode(images), ref)
    (tmp_path / "tiny_clip.json").write_text((folder / "config.json").read_text())
    torch.testing.assert_close(ClipVisionEncoder.from_local(single).encode(images), ref)
    # A CLIPVisionModelWithProjection object is accepted as is.
    with_proj = transformers.CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True)
    torch.testing.assert_close(ClipVisionEncoder(with_proj).encode(images), ref)
    # Errors name the file.
    with pytest.raises(MissingModelFileError, match="nowhere"):
        ClipVisionEncoder.from_local(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingModelFileError, match="config.json"):
        ClipVisionEncoder.from_local(tmp_path / "empty")
    truncated = tmp_path / "trunc.safetensors"
    save_file({k: v for k, v in sd.items() if "layers.1." not in k}, str(truncated))
    with pytest.raises(HP3Error, match="lacks"):
        ClipVisionEncoder.from_local(truncated, config=transformers.CLIPVisionConfig(**TINY_CLIP))


# -- head-token decoder ------------------------------------------------------------------------
def enc_config(**kw) -> HeadEncoderConfig:
    return dataclasses.replace(tiny_hp3_config().encoder, **kw)


def refs(b, r, t=50, c=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.nn.functional.normalize(torch.randn(b, r, 512, generator=g), dim=-1)
    return ids, torch.randn(b, r, t, c, generator=g)


def test_decoder_output_shape_and_determinism():
    cfg = enc_config(num_layers=2)
    torch.manual_seed(1)
    a = HeadTokenDecoder(cfg).eval()
    torch.manual_seed(2)
    fresh = torch.get_rng_state()
    b = HeadTokenDecoder(cfg).eval()
    assert torch.equal(torch.get_rng_state(), fresh)  # the global RNG is neither used nor moved
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = HeadTokenDecoder(cfg, seed=1)
    assert not torch.equal(a.queries, c.queries)
    assert a.queries.std().item() == pytest.approx(0.02, rel=0.3)
    # The layers are initialised independently (not deep copies of one layer).
    assert not torch.equal(a.layers[0].linear1.weight, a.layers[1].linear1.weight)
    ids, clip = refs(3, 1)
    out = a(ids, clip)
    assert out.shape == (3, cfg.num_tokens, cfg.width)
    assert torch.equal(out, a(ids, clip))
    torch.testing.assert_close(out, b(ids, clip))
    # Each batch item only depends on its own references.
    torch.testing.assert_close(out[1:2], a(ids[1:2], clip[1:2]), atol=1e-5, rtol=1e-5)
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_multi_reference_concatenates_memory_and_ignores_order():
    cfg = enc_config()
    dec = HeadTokenDecoder(cfg).eval()
    ids, clip = refs(1, 2, seed=5)
    assert dec.memory(ids, clip).shape == (1, 2 * (1 + 50), cfg.width)
    two = dec(ids, clip)
    assert two.shape == (1, cfg.num_tokens, cfg.width)
    one = dec(ids[:, :1], clip[:, :1])
    assert (two - one).abs().max() > 1e-3
    swapped = dec(ids.flip(1), clip.flip(1))
    torch.testing.assert_close(swapped, two, atol=1e-5, rtol=1e-5)
    # The same reference twice is the same evidence as once (attention averages over keys).
    torch.testing.assert_close(dec(ids[:, :1].repeat(1, 2, 1), clip[:, :1].repeat(1, 2, 1, 1)), one,
                               atol=1e-5, rtol=1e-5)


def test_padded_batch_with_ref_mask_equals_the_unpadded_items():
    dec = HeadTokenDecoder(enc_config(num_layers=2)).eval()
    ids_a, clip_a = refs(1, 3, seed=6)   # person A: 3 references
    ids_b, clip_b = refs(1, 1, seed=7)   # person B: 1 reference
    junk_ids, junk_clip = refs(1, 2, seed=8)
    ids = torch.cat([ids_a, torch.cat([ids_b, junk_ids], 1)])
    clip = torch.cat([clip_a, torch.cat([clip_b, junk_clip], 1)])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = dec(ids, clip, ref_mask=mask)
    torch.testing.assert_close(out[0], dec(ids_a, clip_a)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], dec(ids_b, clip_b)[0], atol=1e-5, rtol=1e-5)
    assert (dec(ids, clip)[1] - out[1]).abs().max() > 1e-3  # without the mask the junk counts
    with pytest.raises(ValueError, match="no reference"):
        dec(ids, clip, ref_mask=torch.tensor([[True, True, True], [False, False, False]]))


def test_state_dict_keys_match_the_weight_file_layout():
    config = tiny_hp3_config()
    dec = HeadTokenDecoder(config.encoder, seed=1)
    file_sd = {k[len("token_decoder."):]: v for k, v in tiny_state_dict(config, seed=3).items()
               if k.startswith("token_decoder.")}
    assert {"id_proj.weight", "id_proj.bias", "clip_proj.weight", "clip_proj.bias", "queries"} <= set(file_sd)
    assert {k: v.shape for k, v in file_sd.items()} == {k: v.shape for k, v in dec.state_dict().items()}
    dec.load_state_dict(file_sd)  # strict
    assert torch.equal(dec.queries, file_sd["queries"])


def test_clip_width_mismatch_error():
    msg = ("the CLIP vision model gives 1280-wide features (ViT-H/14) but these HP3 weights were "
           "trained with 1024 (ViT-L/14); load the matching CLIP vision model")
    with pytest.raises(ClipWidthMismatchError) as err:
        check_clip_width(1280, 1024)
    assert str(err.value) == msg and isinstance(err.value, HP3Error) and "\n" not in msg
    assert (err.value.found, err.value.expected) == (1280, 1024)
    with pytest.raises(ClipWidthMismatchError, match="but hp3_sd15.safetensors were trained"):
        check_clip_width(1664, 1280, "hp3_sd15.safetensors")
    check_clip_width(1024, 1024)
    dec = HeadTokenDecoder(enc_config(clip_width=1024))
    ids, clip = refs(1, 1, t=5, c=1280)
    with pytest.raises(ClipWidthMismatchError, match=r"1280-wide features \(ViT-H/14\).*1024 \(ViT-L/14\)"):
        dec(ids, clip)


# -- head features ----------------------------------------------------------------------------
def make_features(r=2, tokens=True) -> HeadFeatures:
    g = torch.Generator().manual_seed(3)
    return HeadFeatures(
        id_embeds=torch.randn(r, 512, generator=g),
        clip_hidden=torch.randn(r, 50, 48, generator=g),
        crops=torch.rand(r, 32, 32, 3, generator=g),
        keypoints=[np.random.default_rng(i).uniform(0, 32, (5, 2)).astype(np.float32) for i in range(r)],
        clip_width=48, source_names=[f"photo_{i}.jpg" for i in range(r)],
        face_info=[{"score": np.float32(0.875), "box": (1.5, 2.0, 30.0, 31.0), "index": i, "detector": "x"}
                   for i in range(r)],
        tokens=torch.randn(4, 32, generator=g) if tokens else None)


def test_head_features_save_load_round_trip(tmp_path):
    feats = make_features()
    assert feats.num_refs == 2
    torch.testing.assert_close(feats.id_embeds.norm(dim=-1), torch.ones(2))  # normalised on build
    path = feats.save(tmp_path / "out" / "tokens.safetensors")
    back = HeadFeatures.load(path)
    for name in ("id_embeds", "clip_hidden", "crops", "tokens"):
        a, b = getattr(feats, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert len(back.keypoints) == 2
    for a, b in zip(feats.keypoints, back.keypoints):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert back.clip_width == 48 and back.source_names == feats.source_names
    assert back.face_info == [{"score": 0.875, "box": [1.5, 2.0, 30.0, 31.0], "index": i, "detector": "x"}
                              for i in range(2)]
    # Saving what was loaded gives the same tensors again (no re-normalisation drift).
    again = HeadFeatures.load(back.save(tmp_path / "again.safetensors"))
    assert torch.equal(again.id_embeds, feats.id_embeds)
    # Without tokens; cat of two objects; to(device).
    no_tok = HeadFeatures.load(make_features(1, tokens=False).save(tmp_path / "one.safetensors"))
    assert no_tok.tokens is None and no_tok.num_refs == 1
    both = HeadFeatures.cat([feats, no_tok])
    assert both.num_refs == 3 and both.tokens is None and both.clip_hidden.shape == (3, 50, 48)
    assert feats.to("cpu").id_embeds.device.type == "cpu"


def test_head_features_file_errors(tmp_path):
    with pytest.raises(MissingModelFileError):
        HeadFeatures.load(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(HP3Error, match="not an HP3 head-features file"):
        HeadFeatures.load(other)
    with pytest.raises(ValueError, match="clip_width"):
        dataclasses.replace(make_features(), clip_width=1024)


def test_decoder_tokens_for_features_equals_batched_forward():
    feats = make_features(2)
    dec = HeadTokenDecoder(enc_config()).eval()
    tokens = dec.tokens_for(feats)
    assert tokens.shape == (4, 32)
    torch.testing.assert_close(tokens, dec(feats.id_embeds[None], feats.clip_hidden[None])[0])
    wide = dataclasses.replace(feats, clip_hidden=torch.zeros(2, 50, 64), clip_width=64)
    with pytest.raises(ClipWidthMismatchError):
        dec.tokens_for(wide)
