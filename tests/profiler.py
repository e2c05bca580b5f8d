"""An independent FLOPs measurement: TensorFlow's profiler on a frozen inference graph.

The profiler counts 2 float ops per multiply-accumulate of MatMul, BatchMatMul and
Conv2D nodes, plus element-wise ops at fixed rates (tensorflow/python/profiler/
internal/flops_registry.py). Einsum nodes are invisible to it.
"""

import sys
from pathlib import Path

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

MATRIX_OPS = {"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D"}


def float_ops(model, input_shape=(1, 32, 32, 3)) -> list[tuple[str, str, int]]:
    """(node name, op type, float ops) of every node the profiler counts, batch of 1."""
    function = tf.function(lambda images: model(images, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec(input_shape, tf.float32))
    graph_def = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    counted = []
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        for node in graph.as_graph_def().node:
            try:
                value = tf_ops.get_stats_for_node_def(graph, node, "flops").value
            except ValueError:  # an op with no registered flops
                continue
            if value:
                counted.append((node.name, node.op, value))
    return counted


def reference_model(script, *flags):
    """The keras.io reference's model, built in this process by its own script (which
    ends with sys.exit after building the model when given --params-only)."""
    namespace = {"__name__": "keras_io_reference", "__file__": str(script)}
    saved_argv = sys.argv
    sys.argv = [str(script), "unused-data-dir", "--params-only", *flags]
    try:
        exec(compile(Path(script).read_text(), str(script), "exec"), namespace)
    except SystemExit:
        pass
    finally:
        sys.argv = saved_argv
    return namespace["model"]
