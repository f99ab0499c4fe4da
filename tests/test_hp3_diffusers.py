"""HP3 on diffusers: the UNet hooks, the LDM -> diffusers conversion, ComfyUI == diffusers, ``init``."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from harness.tiny_hp3 import tiny_hp3_config, tiny_hp3_model
from hp3_core import cli
from hp3_core.connector import ModulatedGroupNorm, inject
from hp3_core.diffusers_patch import (activate, decoder_channels, decoder_resnets, install, installed, remove,
                                      sdxl_added_cond)
from hp3_core.errors import HP3Error
from hp3_core.unet_convert import (LDM_PREFIX, controller_config_from_ldm, convert_ldm_unet, unet_config,
                                   unet_from_ldm)

LATENT = 8


def random_unet(family: str, seed: int = 0):
    from diffusers import UNet2DConditionModel
    config = tiny_hp3_config(family)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config(config))
    return unet.eval(), config


def inputs(config, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c = config.controller
    x = torch.randn(batch, 4, LATENT, LATENT, generator=g)
    t = torch.tensor([999.0, 250.0][:batch])
    text = torch.randn(batch, 6, c.cross_attention_dim, generator=g)
    tokens = torch.randn(batch, config.encoder.num_tokens, config.encoder.width, generator=g)
    hint = torch.rand(batch, 3, 8 * LATENT, 8 * LATENT, generator=g)
    added = None
    if c.addition_embed_type:
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        added = {"text_embeds": torch.randn(batch, pooled, generator=g),
                 "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch)}
    return x, t, text, tokens, hint, added


class Case:
    """A diffusers UNet, an HP3 model and one batch of inputs, with HP3's conditions computed."""

    def __init__(self, family: str, trained: bool):
        self.unet, self.config = random_unet(family)
        self.hp3 = tiny_hp3_model(self.config, seed=3, trained=trained)
        self.x, self.t, self.text, tokens, hint, self.added = inputs(self.config)
        y = sdxl_added_cond(self.unet, **self.added) if self.added else None
        with torch.no_grad():
            self.conds = self.hp3.control_features(self.x, self.t, tokens, hint, y)

    def predict(self) -> torch.Tensor:
        with torch.no_grad():
            return self.unet(self.x, self.t, encoder_hidden_states=self.text, added_cond_kwargs=self.added).sample

    def predict_hp3(self, rows=None) -> torch.Tensor:
        with activate(self.hp3, self.conds, rows):
            return self.predict()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_untrained_hp3_leaves_the_unet_exactly_unchanged(family):
    case = Case(family, trained=False)
    bare = case.predict()
    with installed(case.unet, case.hp3.config):
        assert all(isinstance(r.norm1, ModulatedGroupNorm) for r in decoder_resnets(case.unet))
        assert len(case.conds) == len(decoder_resnets(case.unet))
        with_hp3 = case.predict_hp3()
    assert bare.abs().max() > 0 and torch.equal(with_hp3, bare)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_trained_connector_changes_the_prediction_and_rows_zero_do_not(family):
    case = Case(family, trained=True)
    bare = case.predict()
    norms = [r.norm1 for r in decoder_resnets(case.unet)]
    handle = install(case.unet)
    try:
        assert torch.equal(case.predict(), bare), "installed but inactive: the bare UNet"
        full = case.predict_hp3()
        assert (full - bare).abs().amax(dim=(1, 2, 3)).min() > 1e-3, "every row must change"
        assert torch.equal(case.predict_hp3(rows=0.0), bare)
        mixed = case.predict_hp3(rows=torch.tensor([0.0, 1.0]))
        assert torch.equal(mixed[0], bare[0]), "a 0-row is exactly the bare UNet"
        torch.testing.assert_close(mixed[1], full[1], rtol=1e-5, atol=1e-6)
        with pytest.raises(HP3Error, match="already installed"):
            install(case.unet)
    finally:
        remove(handle)
    assert [r.norm1 for r in decoder_resnets(case.unet)] == norms, "remove() restores the GroupNorms"
    assert torch.equal(case.predict_hp3(), bare), "removed: conditions have no effect"


def test_injection_hook_acts_on_the_decoder_channels_keyword_or_positional():
    case = Case("sd15", trained=True)
    resnet = decoder_resnets(case.unet)[4]
    dec, skip = decoder_channels(case.unet)[4]
    cond = case.conds[4]
    x = torch.randn(2, dec + skip, *cond.shape[-2:])
    temb = torch.randn(2, resnet.time_emb_proj.in_features)
    with installed(case.unet), activate(case.hp3, case.conds), torch.no_grad():
        pos = resnet(x, temb)
        kw = resnet(input_tensor=x, temb=temb)
        expected_input = torch.cat([inject(4, x[:, :dec]), x[:, dec:]], 1)
        assert not torch.equal(expected_input, x)
    assert torch.equal(pos, kw)
    with activate(case.hp3, case.conds), torch.no_grad():  # the hook alone, by hand: same result
        n = resnet.norm1
        resnet.norm1 = ModulatedGroupNorm(n, 4)
        try:
            by_hand = resnet(expected_input, temb)
        finally:
            resnet.norm1 = n
    assert torch.equal(pos, by_hand)


def test_install_rejects_an_hp3_model_of_another_layout():
    unet, _ = random_unet("sd15")
    with pytest.raises(HP3Error, match="expect a UNet with 9 decoder blocks but this one has 12"):
        install(unet, tiny_hp3_config("sdxl"))
    assert not any(isinstance(r.norm1, ModulatedGroupNorm) for r in decoder_resnets(unet))


# --- the LDM/ComfyUI UNet, converted -------------------------------------------------------------

def ldm_state(tiny_model) -> dict[str, torch.Tensor]:
    return {LDM_PREFIX + k: v.detach().clone().float()
            for k, v in tiny_model.model.diffusion_model.state_dict().items()}


def comfy_real_unet_shapes(comfy, family: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the real SD1.5/SDXL UNet as ComfyUI builds it (on the meta device)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    common = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
              "model_channels": 320, "num_res_blocks": 2, "use_spatial_transformer": True, "legacy": False,
              "use_temporal_attention": False}
    if family == "sd15":
        cfg = {**common, "channel_mult": [1, 2, 4, 4], "num_heads": 8, "num_head_channels": -1,
               "context_dim": 768, "use_linear_in_transformer": False, "adm_in_channels": None,
               "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
               "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
    else:
        cfg = {**common, "channel_mult": [1, 2, 4], "num_heads": -1, "num_head_channels": 64,
               "context_dim": 2048, "use_linear_in_transformer": True, "adm_in_channels": 2816,
               "num_classes": "sequential", "transformer_depth": [0, 0, 2, 2, 10, 10],
               "transformer_depth_middle": 10, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}
    unet = UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_real_family_layouts_are_read_off_the_shapes(comfy, family):
    from diffusers import UNet2DConditionModel

    from hp3_core.config import HP3Config
    shapes = comfy_real_unet_shapes(comfy, family)
    expected = HP3Config.for_family(family).controller
    assert controller_config_from_ldm(shapes, family) == expected
    other = "sdxl" if family == "sd15" else "sd15"
    with pytest.raises(HP3Error, match=f"--family {family}"):
        controller_config_from_ldm(shapes, other)
    # Every tensor of the real UNet finds its diffusers place, with its shape.
    cfg = unet_config(expected, family=family)
    with torch.device("meta"):
        target = {k: tuple(v.shape) for k, v in UNet2DConditionModel(**cfg).state_dict().items()}
    converted = convert_ldm_unet({k: torch.empty(s, device="meta") for k, s in shapes.items()}, cfg)
    assert {k: tuple(v.shape) for k, v in converted.items()} == target


def test_tiny_comfy_unet_converts_to_the_same_diffusers_unet(tiny_model):
    state = ldm_state(tiny_model)
    unet = unet_from_ldm(state, family="sd15")
    dm = tiny_model.model.diffusion_model
    x, t, text, *_ = inputs(tiny_hp3_config("sd15"))
    with torch.no_grad():
        a = dm(x, t, text)
        b = unet(x, t, encoder_hidden_states=text).sample
    assert a.abs().max() > 1e-3
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # The converted UNet's weights are the ComfyUI UNet's own.
    assert torch.equal(unet.conv_in.weight, state[LDM_PREFIX + "input_blocks.0.0.weight"])
    assert torch.equal(unet.up_blocks[1].resnets[2].norm1.weight,
                       state[LDM_PREFIX + "output_blocks.5.0.in_layers.0.weight"])
    with pytest.raises(HP3Error, match="SDXL"):
        unet_from_ldm(state, family="sdxl")


def comfy_predict(dm, x, t, text, hp3=None, conds=None, rows=None):
    """ComfyUI's UNet, with HP3 installed the way the ComfyUI nodes do (patch before cat + norm)."""
    if hp3 is None:
        with torch.no_grad():
            return dm(x, t, text)

    def output_block_patch(h, hsp, transformer_options):
        return inject(transformer_options["block"][1], h), hsp

    norms = [block[0].in_layers[0] for block in dm.output_blocks]
    for i, block in enumerate(dm.output_blocks):
        block[0].in_layers[0] = ModulatedGroupNorm(norms[i], i)
    try:
        with activate(hp3, conds, rows), torch.no_grad():
            return dm(x, t, text, transformer_options={"patches": {"output_block_patch": [output_block_patch]}})
    finally:
        for i, block in enumerate(dm.output_blocks):
            block[0].in_layers[0] = norms[i]


def test_comfyui_and_diffusers_give_the_same_hp3_prediction(tiny_model, record_property):
    dm = tiny_model.model.diffusion_model
    unet = unet_from_ldm(ldm_state(tiny_model), family="sd15")
    config = tiny_hp3_config("sd15")
    hp3 = tiny_hp3_model(config, seed=5, trained=True)
    x, t, text, tokens, hint, _ = inputs(config)
    with torch.no_grad():
        conds = hp3.control_features(x, t, tokens, hint)
    rows = torch.tensor([1.0, 0.5])

    bare_comfy = comfy_predict(dm, x, t, text)
    with torch.no_grad():
        bare_diffusers = unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(bare_diffusers, bare_comfy, rtol=1e-5, atol=1e-6, msg="bare UNets differ")

    comfy_hp3 = comfy_predict(dm, x, t, text, hp3, conds, rows)
    assert isinstance(dm.output_blocks[0][0].in_layers[0], torch.nn.GroupNorm), "ComfyUI UNet restored"
    with installed(unet, hp3.config), activate(hp3, conds, rows), torch.no_grad():
        diffusers_hp3 = unet(x, t, encoder_hidden_states=text).sample
    assert (comfy_hp3 - bare_comfy).abs().amax(dim=(1, 2, 3)).min() > 1e-3, "HP3 must change every row"
    diff = (diffusers_hp3 - comfy_hp3).abs().max().item()
    record_property("cross_host_max_abs_diff", diff)
    print(f"cross-host max abs diff: {diff:.3e} (prediction max {comfy_hp3.abs().max().item():.3e})")
    torch.testing.assert_close(diffusers_hp3, comfy_hp3, rtol=1e-5, atol=1e-6)


# --- init ------------------------------------------------------------------------------------------

def write_checkpoint(path, tiny_model):
    tensors = ldm_state(tiny_model)
    tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(4, 4, 3, 3)  # ignored (VAE)
    tensors = {k: v.half() for k, v in tensors.items()}  # as checkpoints usually are
    save_file(tensors, str(path))
    return tensors


def test_init_writes_untrained_weights_copied_from_the_base_unet(tiny_model, tmp_path, capsys):
    from hp3_core.hp3_model import HP3Model
    from hp3_core.weights import load_hp3_weights
    base = tmp_path / "tiny_base.safetensors"
    ckpt = write_checkpoint(base, tiny_model)
    out = tmp_path / "hp3_init.safetensors"
    assert cli.main(["init", "--base", str(base), "--family", "sd15", "--out", str(out),
                     "--clip-width", "1280", "--backend", "mediapipe"]) == 0
    weights = load_hp3_weights(out)
    model = HP3Model.from_weights(weights)
    cfg = weights.config
    assert cfg.family == "sd15" and cfg.encoder.clip_width == 1280 and cfg.render_backend == "mediapipe"
    assert cfg.controller == controller_config_from_ldm(ckpt, "sd15")
    assert weights.metadata["base_checkpoint"] == "tiny_base.safetensors"
    assert weights.metadata["status"] == "untrained"

    # The controller's shared layers are the base UNet's encoder + middle block.
    net = model.controller.net
    src = {k[len(LDM_PREFIX):]: v.float() for k, v in ckpt.items() if k.startswith(LDM_PREFIX)}
    pairs = {"conv_in.weight": "input_blocks.0.0.weight",
             "time_embedding.linear_1.weight": "time_embed.0.weight",
             "down_blocks.0.resnets.0.norm1.weight": "input_blocks.1.0.in_layers.0.weight",
             "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight":
                 "input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
             "down_blocks.2.downsamplers.0.conv.weight": "input_blocks.9.0.op.weight",
             "down_blocks.3.resnets.1.conv2.weight": "input_blocks.11.0.out_layers.3.weight",
             "mid_block.resnets.1.conv2.bias": "middle_block.2.out_layers.3.bias",
             "mid_block.attentions.0.proj_out.weight": "middle_block.1.proj_out.weight"}
    own = net.state_dict()
    for mine, theirs in pairs.items():
        assert torch.equal(own[mine], src[theirs]), mine
    unet = unet_from_ldm(src, cfg)
    shared = [k for k in own if k in unet.state_dict()]
    assert len(shared) > 100
    assert all(torch.equal(own[k], unet.state_dict()[k]) for k in shared)

    # The connector's output convs are zero: the file leaves the UNet as it was.
    for name, p in model.connector.named_parameters():
        if name.split(".")[2] in ("inject", "scale_out", "shift_out"):
            assert not p.any(), name
    assert "wrote untrained SD1.5 HP3 weights" in capsys.readouterr().out
    assert (cfg.encoder.identity, cfg.encoder.id_dim) == ("insightface", 512)


def test_init_with_the_dlib_identity_makes_a_128_wide_identity_projection(tiny_model, tmp_path, capsys):
    from hp3_core.weights import load_hp3_weights
    base = tmp_path / "tiny_base.safetensors"
    write_checkpoint(base, tiny_model)
    out = tmp_path / "hp3_dlib.safetensors"
    assert cli.main(["init", "--base", str(base), "--family", "sd15", "--out", str(out), "--backend", "ict",
                     "--identity", "dlib"]) == 0
    weights = load_hp3_weights(out)
    assert (weights.config.encoder.identity, weights.config.encoder.id_dim) == ("dlib", 128)
    assert weights.state_dict["token_decoder.id_proj.weight"].shape[1] == 128
    assert "identity: dlib (128-d)" in weights.summary()


def test_init_refuses_the_wrong_family_and_pickles(tiny_model, tmp_path, capsys):
    base = tmp_path / "tiny_base.safetensors"
    write_checkpoint(base, tiny_model)
    out = tmp_path / "x.safetensors"
    assert cli.main(["init", "--base", str(base), "--family", "sdxl", "--out", str(out)]) == 1
    assert "not SDXL" in capsys.readouterr().err and not out.exists()
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    assert cli.main(["init", "--base", str(pickle), "--family", "sd15", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "pickle" in err and str(pickle) in err and not out.exists()
