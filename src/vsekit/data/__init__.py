"""Datasets: the split description, on-disk formats and the built-in synthetic scenes."""

from vsekit.data.dataset import Batch, ImageStore, RetrievalSplit

__all__ = ["Batch", "ImageStore", "RetrievalSplit", "load_splits"]


def load_splits(data_section: dict) -> dict[str, RetrievalSplit]:
    """Load every split of the dataset a config's ``data`` section names."""
    from vsekit.data.formats import DATA_FORMATS

    name, params = DATA_FORMATS.parse(data_section, "data")
    return DATA_FORMATS.build(name, params)
