"""Writers of the on-disk dataset layouts the detection and segmentation tools read: COCO 2017 (instance
segmentation) and ADE20K. The test fixtures (swtasks.mm.testing) and the demo data (swtasks.mm.demo) draw their
images and labels and hand them to these. Imports PIL and the standard library only.
"""

from __future__ import annotations

import json
import os
import os.path as osp

__all__ = ["write_ade20k", "write_coco"]


def write_coco(root: str, classes, counts: dict[str, int], make_image) -> str:
    """Write a COCO 2017-layout instance-segmentation dataset under ``root`` (``<split>/*.jpg``,
    ``annotations/instances_<split>.json``): ``counts`` maps each split to its number of images, made in order by
    ``make_image(i) -> (HxWx3 uint8 image, [(category index, [x, y, w, h], area, polygon), ...])``. Returns ``root``."""
    from PIL import Image

    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(classes)]
    os.makedirs(osp.join(root, "annotations"), exist_ok=True)
    for split, n in counts.items():
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img_id = i + 1
            img, objects = make_image(i)
            for kind, bbox, area, polygon in objects:
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": kind + 1, "bbox": bbox,
                             "area": area, "segmentation": [polygon], "iscrowd": 0})
            name = f"{img_id:012d}.jpg"
            Image.fromarray(img).save(osp.join(root, split, name), quality=95)
            images.append({"id": img_id, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
        with open(osp.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    return root


def write_ade20k(root: str, counts: dict[str, int], make_image, stem: str) -> str:
    """Write an ADE20K-layout segmentation dataset under ``root`` (``images/<split>/*.jpg``,
    ``annotations/<split>/*.png``): ``counts`` maps each split to its number of images, made in order by
    ``make_image(i) -> (HxWx3 uint8 image, HxW uint8 label map)``; file stems ``stem.format(split=, i=)``."""
    from PIL import Image

    for split, n in counts.items():
        os.makedirs(osp.join(root, "images", split), exist_ok=True)
        os.makedirs(osp.join(root, "annotations", split), exist_ok=True)
        for i in range(n):
            img, label = make_image(i)
            name = stem.format(split=split, i=i + 1)
            Image.fromarray(img).save(osp.join(root, "images", split, name + ".jpg"), quality=95)
            Image.fromarray(label).save(osp.join(root, "annotations", split, name + ".png"))
    return root
