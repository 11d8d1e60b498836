"""Spiking layers, the network builder and the losses of HoSNN."""
from .ann import ANN, AnnNetwork, build_network, network_settings
from .bptt import BpttPath
from .gradients import gradient_path_name, parse_gradient_path, use_gradient_path
from .config_keys import ConfigError
from .encoding import time_expand
from .loss import attack_loss, class_scores, compute_loss, predict
from .nds import check_nds, nds_shapes, nds_source, read_nds_file
from .network import Network, layer_shapes, unknown_layer_keys
from .neuron import psp
from .settings import NetworkSettings
from .surrogate import SURROGATES

__all__ = ['ANN', 'AnnNetwork', 'build_network', 'network_settings',
           'BpttPath', 'SURROGATES', 'gradient_path_name', 'parse_gradient_path', 'use_gradient_path',
           'ConfigError', 'Network', 'check_nds', 'nds_shapes', 'nds_source', 'NetworkSettings', 'attack_loss', 'class_scores', 'compute_loss', 'layer_shapes',
           'predict', 'psp', 'read_nds_file', 'time_expand', 'unknown_layer_keys']
