"""Losses, each registered by name in :data:`LOSSES` (the shared signature is in base.py)."""

from vsekit.losses.base import LOSSES, LossOutput, same_image_mask
from vsekit.losses.ranking import InfoNCELoss, VSE0Loss, VSEPPLoss

__all__ = ["LOSSES", "InfoNCELoss", "LossOutput", "VSE0Loss", "VSEPPLoss", "same_image_mask"]
