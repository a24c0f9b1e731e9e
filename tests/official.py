"""Build checkpoints in the official aimagelab/CoDE layout, and the reference pipeline.

The real weights cannot be downloaded here, so tests make their own: a random
transformers ViTModel (ViT-Tiny shape) saved with save_pretrained, plus scikit-learn heads fit
on its embeddings and dumped with joblib under the official file names. The reference below
is the authors' inference code path (transformers + torchvision + scikit-learn predict).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HEAD_FILES = {
    "linear": "sklearn/linear_tot_classifier_epoch-32.sav",
    "knn": "sklearn/knn_tot_classifier_epoch-32.sav",
    "ocsvm": "sklearn/ocsvm_kernel_poly_gamma_auto_nu_0_1_crop.joblib",
}


def vit_tiny_config(layer_norm_eps: float = 1e-6, seed: int = 0):
    from transformers import ViTConfig

    return ViTConfig(
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=224,
        patch_size=16,
        qkv_bias=True,
        layer_norm_eps=layer_norm_eps,
        initializer_range=0.1,
    )


def reference_transform():
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


class Reference:
    """transformers ViTModel with the pooler removed, CLS of last_hidden_state, as the authors do."""

    def __init__(self, folder: Path) -> None:
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.ViTModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
        self.transform = reference_transform()

    def embed_images(self, images) -> np.ndarray:
        torch = self.torch
        x = torch.stack([self.transform(im.convert("RGB")) for im in images])
        with torch.no_grad():
            return self.model(pixel_values=x).last_hidden_state[:, 0].numpy()

    def embed_paths(self, paths) -> np.ndarray:
        from PIL import Image

        out = []
        for i in range(0, len(paths), 32):
            ims = [Image.open(p) for p in paths[i : i + 32]]
            out.append(self.embed_images(ims))
        return np.concatenate(out)


def fit_heads(emb: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import OneClassSVM

    return {
        "linear": LogisticRegression(max_iter=5000).fit(emb, labels),
        "knn": KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(emb, labels),
        "ocsvm": OneClassSVM(kernel="poly", gamma="auto", nu=0.1).fit(emb[labels == 0]),
    }


def build_official_checkpoint(folder: Path, fit_images, fit_labels, seed: int = 0, layer_norm_eps: float = 1e-6) -> dict:
    """Write config.json, model.safetensors, preprocessor_config.json and sklearn/*; return the estimators."""
    import joblib
    import torch
    import transformers

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model = transformers.ViTModel(vit_tiny_config(layer_norm_eps)).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_normalize": True,
                "do_resize": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "image_processor_type": "ViTImageProcessor",
                "size": {"height": 224, "width": 224},
            }
        )
    )
    ref = Reference(folder)
    emb = ref.embed_images(fit_images)
    heads = fit_heads(emb, np.asarray(fit_labels))
    (folder / "sklearn").mkdir(exist_ok=True)
    for name, est in heads.items():
        joblib.dump(est, folder / HEAD_FILES[name])
    return heads
