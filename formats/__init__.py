"""Weight formats: how each layer's weights are stored, loaded and run, one module a format.

=============== ============================ ===================== ===========================
format          module                       hardware feature      stores
=============== ============================ ===================== ===========================
``dense``       :mod:`~.dense`               none                  every weight
``ikr``         :mod:`~.ikr` (method B)      ``ikr``               n taps per kernel, indices
``perm_affine`` :mod:`~.perm` (method C)     ``perm``              ``s`` and ``(a, b)`` a row
``perm_index``  :mod:`~.perm` (method C)     none (gathered)       ``s`` and an index ROM
``slim``        :mod:`~.slim` (method A)     ``kgate``             centred kernels, 1x1 approx
=============== ============================ ===================== ===========================

Each format is a :class:`~slimnfu.formats.base.WeightFormat`; :func:`get_format` finds one by
the name a :class:`QLayer` carries. The layouts of every engine memory are in
:mod:`slimnfu.formats.layout`, the counting of MACs, parameters and bits in
:mod:`slimnfu.formats.accounting`.
"""

from slimnfu.formats.base import FORMATS, WeightFormat, get_format, register
from slimnfu.formats.dense import DenseFormat
from slimnfu.formats.ikr import IkrFormat, IkrWeights
from slimnfu.formats.perm import (PermAffineFormat, PermAffineWeights, PermIndexFormat,
                                  PermIndexWeights)
from slimnfu.formats.qmodel import QLayer, QuantModel
from slimnfu.formats.slim import SlimFormat, SlimWeights

__all__ = ["FORMATS", "WeightFormat", "get_format", "QLayer", "QuantModel", "IkrWeights",
           "PermAffineWeights", "PermIndexWeights", "SlimWeights"]

for _fmt in (DenseFormat(), IkrFormat(), PermAffineFormat(), PermIndexFormat(), SlimFormat()):
    register(_fmt)
