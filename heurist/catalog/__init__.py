"""The public model catalog."""

from heurist.catalog.loader import Catalog, load_catalog
from heurist.catalog.schema import Family, JobKind, ModelSpec, SourceKind, VramClass

__all__ = ["Catalog", "Family", "JobKind", "ModelSpec", "SourceKind", "VramClass", "load_catalog"]
