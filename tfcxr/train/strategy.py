"""Distribution strategies, and which process of a cluster writes files.

mirrored     MirroredStrategy over all local GPUs, else every logical CPU device (--cpu_replicas)
one_device   one device: the first GPU, else the CPU
multi_worker MultiWorkerMirroredStrategy over the cluster in TF_CONFIG

One device (one_device, or mirrored where there is only one) gets TensorFlow's default strategy:
the same strategy.run / reduce / gather and distribute_datasets_from_function (which hands the
dataset back as it is), without a distributed iterator. A live distributed iterator halves CPU
training throughput (its threads fight the compute threads over futexes: see
benchmarks/results/training.md, where model.fit under MirroredStrategy pays the same), and
mirroring one device buys nothing; Keras's model.fit without a strategy takes the same path.
"""

import tempfile

import tensorflow as tf

STRATEGIES = ("mirrored", "one_device", "multi_worker")


def split_cpu(replicas):
    """Splits the CPU into `replicas` logical devices; must run before TF initialises devices."""
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def make_strategy(name="mirrored", cpu_replicas=1):
    """The tf.distribute.Strategy called `name`; `cpu_replicas` > 1 lets mirrored run on a CPU."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    split_cpu(cpu_replicas)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
    if name == "one_device" or len(devices) == 1:
        return tf.distribute.get_strategy()  # the default strategy, on the first device
    return tf.distribute.MirroredStrategy(devices)


def is_chief(strategy):
    """True for the one process that writes files: the only one, or the cluster's chief."""
    resolver = strategy.cluster_resolver
    if resolver is None or resolver.task_type in (None, "chief"):
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def write_dir(directory, strategy):
    """Where this process writes what it must write: `directory` on the chief, else a temp dir.

    Every worker takes part in saving a checkpoint (it may involve collectives), but only the
    chief's copy is kept; the others write to a temporary directory and delete it, as the
    TensorFlow multi-worker guide does.
    """
    return directory if is_chief(strategy) else tempfile.mkdtemp(prefix="tfcxr-worker-")
