"""Model zoo: registered CNN families plus safe loading of user models."""

from metaedge.zoo import mobilenetv2, resnet_cifar  # noqa: F401  (registers the models)
from metaedge.zoo._registry import create_model, list_models, register_model
from metaedge.zoo.loading import build_model, load_exported_program, load_state_dict_file

__all__ = ["build_model", "create_model", "list_models", "load_exported_program", "load_state_dict_file", "register_model"]
