"""3D neural architecture search (SPVNAS): elastic supernets, subnet evaluation, evolutionary search, export.

A supernet is a plain model at its largest widths and depths; a :class:`Subnet` picks a width per width gene and a
depth per stage, and runs through the same weights with the rest masked off (one compilation for every subnet).
"""

from jsparse3d.nas._elastic import Layer as Layer
from jsparse3d.nas._elastic import Supernet as Supernet
from jsparse3d.nas._evaluate import SubnetEvaluator as SubnetEvaluator
from jsparse3d.nas._latency import LatencyTable as LatencyTable
from jsparse3d.nas._latency import measure_latency as measure_latency
from jsparse3d.nas._search import Evaluated as Evaluated
from jsparse3d.nas._search import best as best
from jsparse3d.nas._search import evolutionary_search as evolutionary_search
from jsparse3d.nas._search import pareto_front as pareto_front
from jsparse3d.nas._search import random_search as random_search
from jsparse3d.nas._space import SearchSpace as SearchSpace
from jsparse3d.nas._space import Subnet as Subnet
from jsparse3d.nas._spvcnn import ElasticSPVCNN as ElasticSPVCNN
from jsparse3d.nas._uresnet import ElasticUResNet as ElasticUResNet
