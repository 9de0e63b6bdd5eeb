"""Pure planning: config + inventory -> MIG targets per GPU and the resources the kubelet sees."""
