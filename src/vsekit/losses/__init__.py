"""Losses, each registered by name in :data:`LOSSES` (the shared signature is in base.py)."""

from vsekit.losses.base import LOSSES, LossOutput, same_image_mask
from vsekit.losses.bcls import BCLSLoss, BCLSParams
from vsekit.losses.fne import FNELoss, FNEParams
from vsekit.losses.ranking import InfoNCELoss, VSE0Loss, VSEPPLoss

__all__ = ["LOSSES", "BCLSLoss", "BCLSParams", "FNELoss", "FNEParams", "InfoNCELoss", "LossOutput", "VSE0Loss", "VSEPPLoss", "same_image_mask"]
