"""fatia as a Dynamic Resource Allocation driver (``fatia run --mode dra``).

In DRA mode the cluster's scheduler, not a static layout, decides which MIG slice is cut:
fatia publishes every legal placement of every allowed profile as a device of a
ResourceSlice, and cuts exactly the one the scheduler allocated when the kubelet asks it
to prepare the claim. Sharing a device is several pods referencing one claim; how their
processes share it (time-slicing, at which interval) is the claim's ``gpu.fatia.dev``
parameters. The pieces, pure core first:

- :mod:`.pool`: the per-node config read as a *pool*: which GPUs are offered whole,
  which as MIG partitions, and which profiles;
- :mod:`.devices`: the pool as devices with shared counters (the model the scheduler
  allocates from and the preparer resolves allocations in), each with the
  :mod:`.attributes` claims select it by;
- :mod:`.slices`: those devices, with their health taints, as ResourceSlice objects
  (plain dicts, as the API server takes them);
- :mod:`.sharing`: the opaque ``gpu.fatia.dev`` claim parameters (``GpuConfig``: time-slicing
  and its interval), strictly validated, and which request each entry applies to;
- :mod:`.cdi`: the CDI spec a prepared claim's container gets;
- :mod:`.checkpoint`: what is prepared (and what is being prepared, and what is kept),
  across restarts;
- :mod:`.allocation`: a claim read from the API and its allocation resolved in the pool;
- :mod:`.occupancy`: whether a placement is free to cut for a claim, and which devices the
  apply engine must spare;
- :mod:`.instances`: the NVML work of a prepare and an unprepare, through the MIG apply
  engine, and a whole GPU's time-slice interval through :mod:`mig.timeslice`;
- :mod:`.prepare`: NodePrepareResources/NodeUnprepareResources: a claim's lifecycle, in
  order, under one lock;
- :mod:`.reuse`: under ``dra: {reuse: identical}``, an unprepared claim's instance kept in
  place for a later claim of the same placement, and destroyed when it is in the way or
  no longer wanted;
- :mod:`.registration`, :mod:`.service`: the kubelet's plugin-watcher registration and
  the DRA gRPC service, on unix sockets;
- :mod:`.driver`: the driver's parts and its thread, which reconciles the pool
  (:mod:`.reconcile`: one pass; it taints unhealthy devices with the effect
  ``dra: {taintEffect: …}`` names), switching the MIG mode each offered GPU needs
  (:mod:`.modes`); :mod:`.report`: the driver's status and Events;
- :mod:`.run`: the mode's wiring, as services a supervisor starts and stops.

The ``dra:`` block of the node's config holds the mode's policies; device-plugin mode
reads and ignores it, so that one ConfigMap (``fatia-default``) can serve nodes of both
modes.
"""

DRIVER_NAME = "gpu.fatia.dev"
