"""Tiny offline diffusers pipelines (SD1.5 and SDXL layouts) for tests: a tiny UNet matching
:func:`harness.tiny_hp3.tiny_hp3_config`, a tiny VAE and CLIP text model, and a tokenizer from a
hand-written vocab (no hub). Images are ``SIZE`` pixels (latent 8)."""
from __future__ import annotations

import json

import torch

from harness.tiny_hp3 import tiny_hp3_config
from hp3_core.unet_convert import unet_config

WORDS = ["a", "photo", "of", "person", "portrait", "smiling", "man", "woman"]
SIZE = 64  # pixels: latent 8 (VAE scale 8)


def write_tokenizer(folder):
    """A CLIPTokenizer from a hand-written vocab (no hub): whole words + end-of-word pieces."""
    from transformers import CLIPTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    letters = sorted({c for w in WORDS for c in w})
    for c in letters:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for w in WORDS:  # merge left to right: p h -> ph, ph o -> pho, ... (last piece ends with </w>)
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    merges = list(dict.fromkeys(merges))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def tiny_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, norm_num_groups=8, sample_size=SIZE)


def tiny_text_config(tokenizer) -> dict:
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=len(tokenizer), max_position_embeddings=16, eos_token_id=1, bos_token_id=0,
                pad_token_id=1)


def tiny_sd15_pipe(tmp_path, seed: int = 0):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    tokenizer = write_tokenizer(tmp_path / "tok")
    config = tiny_hp3_config("sd15")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config(config, sample_size=SIZE // 8))
        vae = tiny_vae()
        text = CLIPTextModel(CLIPTextConfig(**tiny_text_config(tokenizer)))
    pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None,
                                   feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, config


def tiny_sdxl_pipe(tmp_path, seed: int = 0):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    tokenizer = write_tokenizer(tmp_path / "tok")
    config = tiny_hp3_config("sdxl")
    text_cfg = tiny_text_config(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config(config, sample_size=SIZE // 8))
        vae = tiny_vae()
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg, projection_dim=64))
    pipe = StableDiffusionXLPipeline(vae=vae.eval(), text_encoder=text.eval(), text_encoder_2=text_2.eval(),
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet.eval(),
                                     scheduler=EulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe, config
