"""localnet: neural networks that learn with layer-local rules (difference target propagation and successors)."""

from .errors import DataError, GraphError, LocalnetError, LocalnetWarning, SpecError
from .network import Network, build
from .spec import Spec, dump_spec, load_spec

__version__ = "0.1.0"
__all__ = ["build", "load_spec", "dump_spec", "Network", "Spec", "LocalnetError", "SpecError", "GraphError",
           "DataError", "LocalnetWarning", "__version__"]
