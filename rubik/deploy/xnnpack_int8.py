"""Int8 activations for XNNPACK: SiLU, sigmoid gates and hard-swish run in int8 inside the delegate.

ExecuTorch's XNNPACK quantizer annotates convolutions, adds and multiplies but no activation, and its
partitioner admits sigmoid and hard-swish in float only. So in an int8 `.pte` of an MBConv model every
SiLU and squeeze-excite gate runs in float between a dequantize and a quantize, and int8 saves only the
convolutions' share. XNNPACK itself runs an int8 sigmoid (and any chain of element-wise ops with int8
input and output) as a 256-entry lookup table. This module composes on top of ExecuTorch's quantizer and
partitioner, forking neither:

- `ActivationQuantizer` (runs before the XNNPACK quantizer) rewrites every SiLU as `x * sigmoid(x)`,
  gives each sigmoid the fixed output quantization XNNPACK's int8 sigmoid needs (scale 1/256, zero point
  -128: [0, 1) in 256 steps), lets a multiply by a gate read the gate with that same quantization (so
  there is no requantize between them), and observes hard-swish's output like any activation.
- `partitioner()` is ExecuTorch's XNNPACK partitioner with sigmoid and hard-swish admitted as static
  int8 as well as fp32.
- `delegate_ops(path)` reads the XNNPACK graphs back out of a written `.pte` and counts each operator by
  the type it computes in, so the export can say what runs in int8 and name what stayed float.

Hard-sigmoid (GhostNet's and MobileNetV3's gates) is left as ExecuTorch lowers it: in float on the gate's
C x 1 x 1 tensor, where it costs next to nothing; the multiply by the gate, on the full feature map, is
int8 either way.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.fx import GraphModule, Node

ATEN = torch.ops.aten
SILU = (ATEN.silu.default, ATEN.silu_.default)
SIGMOID = (ATEN.sigmoid.default, ATEN.sigmoid_.default)
HARDSWISH = (ATEN.hardswish.default, ATEN.hardswish_.default)
MUL = (ATEN.mul.Tensor, ATEN.mul_.Tensor)
# XNNPACK's operators that are not computations: the converts at int8/float seams, shape and layout ops.
NOT_COMPUTE = {"XNNConvert", "XNNStaticReshape", "XNNStaticTranspose", "XNNCopy", "XNNStaticSlice",
               "XNNConcatenate2", "XNNConcatenate3", "XNNConcatenate4", "XNNConcatenate5",
               "XNNStaticConstantPad"}
INT8_TYPES = {"xnn_datatype_qint8", "xnn_datatype_quint8", "xnn_datatype_qcint8", "xnn_datatype_qint32",
              "xnn_datatype_qcint32"}


def _quant_api():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import (
        get_input_act_qspec,
        get_output_act_qspec,
    )
    from torchao.quantization.pt2e.quantizer import (
        FixedQParamsQuantizationSpec,
        QuantizationAnnotation,
        Quantizer,
        SharedQuantizationSpec,
    )

    return (Quantizer, QuantizationAnnotation, FixedQParamsQuantizationSpec, SharedQuantizationSpec,
            get_input_act_qspec, get_output_act_qspec)


def _in_modules(node: Node, names: Collection[str]) -> bool:
    """Whether `node` was traced inside one of the modules `names` (dotted, as in `named_modules()`)."""
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    return any(get_module_name_filter(name)(node) for name in names)


@dataclass
class ActivationCounts:
    silu: int = 0
    gates: int = 0  # sigmoids that are not a SiLU's
    hardswish: int = 0


def make_activation_quantizer(config, keep_float: Collection[str] = ()):
    """The quantizer described in the module docstring, for ExecuTorch's symmetric `config`."""
    Quantizer, Annotation, FixedSpec, SharedSpec, input_spec, output_spec = _quant_api()
    gate_spec = FixedSpec(dtype=torch.int8, quant_min=-128, quant_max=127, scale=1 / 256, zero_point=-128,
                          qscheme=torch.per_tensor_affine)

    class ActivationQuantizer(Quantizer):
        def __init__(self):
            super().__init__()
            self.counts = ActivationCounts()

        def transform_for_annotation(self, gm: GraphModule) -> GraphModule:
            graph = gm.graph
            for node in list(graph.nodes):
                if node.op != "call_function" or node.target not in SILU or _in_modules(node, keep_float):
                    continue
                with graph.inserting_before(node):
                    gate = graph.call_function(ATEN.sigmoid.default, (node.args[0],))
                    product = graph.call_function(ATEN.mul.Tensor, (node.args[0], gate))
                gate.meta, product.meta = dict(node.meta), dict(node.meta)
                product.meta["rubik_silu"] = True
                node.replace_all_uses_with(product)
                graph.erase_node(node)
            graph.lint()
            gm.recompile()
            return gm

        def annotate(self, gm: GraphModule) -> GraphModule:
            counts = ActivationCounts()
            for node in gm.graph.nodes:
                if node.op != "call_function" or _in_modules(node, keep_float):
                    continue
                if node.target in SIGMOID or node.target in HARDSWISH:
                    out = gate_spec if node.target in SIGMOID else output_spec(config)
                    node.meta["quantization_annotation"] = Annotation(
                        input_qspec_map={node.args[0]: input_spec(config)}, output_qspec=out, _annotated=True)
                    counts.hardswish += node.target in HARDSWISH
                elif node.target in MUL:
                    gates = [a for a in node.args[:2] if isinstance(a, Node) and a.target in SIGMOID]
                    if not gates or not all(isinstance(a, Node) for a in node.args[:2]):
                        continue
                    gate = gates[0]
                    other = node.args[1] if node.args[0] is gate else node.args[0]
                    node.meta["quantization_annotation"] = Annotation(
                        input_qspec_map={gate: SharedSpec(gate), other: input_spec(config)},
                        output_qspec=output_spec(config), _annotated=True)
                    if node.meta.get("rubik_silu"):
                        counts.silu += 1
                    else:
                        counts.gates += 1
            self.counts = counts
            return gm

        def validate(self, model: GraphModule) -> None:
            pass

    return ActivationQuantizer()


def make_quantizer(keep_float: Collection[str] = (), activations: bool = True):
    """ExecuTorch's XNNPACK quantizer (per-channel symmetric int8) after rubik's activation quantizer.
    Returns the composed quantizer and the activation quantizer (whose `counts` say what it took).

    `keep_float`: module names (dotted, as in `model.named_modules()`) that stay float in both.
    `activations=False`: the activation quantizer takes nothing (ExecuTorch's quantizer as it is)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer

    config = get_symmetric_quantization_config(is_per_channel=True)
    xnnpack = XNNPACKQuantizer().set_global(config)
    if keep_float:  # (its set_module_name(name, None) is "not supported yet")
        xnnpack.set_filter_function(lambda node: not _in_modules(node, keep_float))
    act = make_activation_quantizer(config, keep_float)
    return ComposableQuantizer([act, xnnpack] if activations else [xnnpack]), act


def partitioner(activations: bool = True):
    """ExecuTorch's XNNPACK partitioner, with sigmoid and hard-swish admitted in static int8 too (unless
    `activations` is False: the partitioner as it is)."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import HardswishConfig, SigmoidConfig
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    if not activations:
        return XnnpackPartitioner()

    def int8_too(base):
        return type(f"Int8{base.__name__}", (base,), {
            "supported_precision_types": lambda self: [ConfigPrecisionType.FP32, ConfigPrecisionType.STATIC_QUANT]})

    widened = {SigmoidConfig: int8_too(SigmoidConfig), HardswishConfig: int8_too(HardswishConfig)}
    return XnnpackPartitioner(configs=[widened.get(c, c) for c in ALL_PARTITIONER_CONFIGS])


# ---- reading a .pte's XNNPACK graphs back -------------------------------------------------------------


@dataclass
class DelegateOps:
    """Each XNNPACK operator of a .pte's delegates, counted by the type it computes in."""

    int8: collections.Counter = field(default_factory=collections.Counter)
    float: collections.Counter = field(default_factory=collections.Counter)

    def float_compute(self) -> dict[str, int]:
        """Float operators that compute something (not the converts at the int8/float seams)."""
        return {op: n for op, n in sorted(self.float.items()) if op not in NOT_COMPUTE}


def _xnnpack_graph_json(blob: bytes) -> dict:
    """An XNNPACK delegate blob (header + flatbuffer) as the JSON of its schema, through ExecuTorch's flatc."""
    import executorch
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader

    root = Path(next(iter(executorch.__path__)))
    header = XNNHeader.from_bytes(blob[:XNNHeader.EXPECTED_LENGTH])
    flat = blob[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "graph.bin").write_bytes(flat)
        schema = root / "backends/xnnpack/serialization/schema.fbs"
        subprocess.run([str(root / "data/bin/flatc"), "--json", "--strict-json", "--defaults-json", "--raw-binary",
                        "-o", tmp, str(schema), "--", str(Path(tmp) / "graph.bin")], check=True, capture_output=True)
        text = (Path(tmp) / "graph.json").read_text()
    # flatc writes non-finite floats (a clamp's open bounds) as inf/nan, which JSON spells otherwise
    text = re.sub(r"(?<![\w\"])(-?)inf\b", r"\1Infinity", re.sub(r"(?<![\w\"])nan\b", "NaN", text))
    return json.loads(text)


def delegate_ops(path: str | Path) -> DelegateOps:
    """Count the operators of every XNNPACK delegate in the .pte at `path` by their output's type."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(Path(path).read_bytes()).program
    ops = DelegateOps()
    for blob in program.backend_delegate_data:
        graph = _xnnpack_graph_json(blob.data)
        types = {}
        for value in graph.get("xvalues", []):
            tensor = value["xvalue_union"]
            tensor = tensor.get("tensor_value", tensor)
            types[tensor["id_out"]] = tensor.get("datatype", "xnn_datatype_fp32")
        for node in graph.get("xnodes", []):
            kind = node["xnode_union_type"]
            out = types.get(node["xnode_union"].get("output_id"), "xnn_datatype_fp32")
            (ops.int8 if out in INT8_TYPES else ops.float)[kind] += 1
    return ops
