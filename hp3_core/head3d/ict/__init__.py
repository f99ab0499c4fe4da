"""The ``ict`` backend: ICT-FaceKit Light's full head (MIT), fitted to MediaPipe's landmarks.

The embedded offline default of the 3D module: a full head (skull, ears, neck, eyes and mouth
interior) with no registration and a licence that allows commercial use.

* :mod:`.facekit`: reading an ICT-FaceKit checkout (OBJ morph targets);
* :mod:`.build_asset`: the converter to the shipped compact asset (``build-head-asset``);
* :mod:`.correspondence`: where MediaPipe's 478 landmarks lie on the head;
* :mod:`.asset`: the shipped asset (``data/ict_head.npz``) and its checks;
* :mod:`.head_model`: parameters -> posed mesh (with a neck that bends);
* :mod:`.fit`: pose, identity and expression from landmarks;
* :mod:`.reconstructor`: the backend behind the :class:`~hp3_core.head3d.reconstructor.Reconstructor`
  interface.
"""
from .asset import ASSET_PATH, HeadAssetError, ICTHeadAsset, load_asset
from .head_model import ICTHeadModel
from .reconstructor import ICTReconstructor

__all__ = ["ASSET_PATH", "HeadAssetError", "ICTHeadAsset", "ICTHeadModel", "ICTReconstructor", "load_asset"]
