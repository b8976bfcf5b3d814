"""The host machine: hardware detection (and, with later issues, the Docker executor)."""

from meca_node.runtime.hardware import detect_hardware, machine_arch
from meca_node.runtime.images import ImageDag, ImageDagError, dag_to_image, image_to_dag

__all__ = ["ImageDag", "ImageDagError", "dag_to_image", "detect_hardware", "image_to_dag",
           "machine_arch"]
