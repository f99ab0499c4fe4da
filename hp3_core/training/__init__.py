"""HP3 training (``python -m hp3_core train --config FILE``, HuggingFace accelerate).

One purpose per module:

* :mod:`.config`: :class:`TrainConfig`, read from YAML/JSON, every field named in errors;
* :mod:`.pairs`: the pair dataset (a source frame and a different target frame of one group);
* :mod:`.arcface_torch`: the user's ArcFace ONNX as a differentiable torch module + 5-point
  alignment with ``affine_grid``/``grid_sample``;
* :mod:`.losses`: ``L = L_diff + lambda * L_id``;
* :mod:`.models`: the frozen base pipeline, CLIP vision, ArcFace and the trainable HP3 model;
* :mod:`.step`: one HP3 forward on a batch (shared by the trainer and ``bench train``);
* :mod:`.trainer`: the loop (accelerate, EMA, checkpoints, resume);
* :mod:`.export`: the node's weight file; :mod:`.validation`: periodic sample grids.

Frozen: UNet, VAE, text encoder(s), CLIP vision, ArcFace, the 3D module (renders are cached in
the dataset). Trained: the token decoder (``encoder.*``), the controller and the connector.
"""
