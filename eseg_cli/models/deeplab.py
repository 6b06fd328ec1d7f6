"""DeepLabV3+ (Table 8's baseline decoder). Filled in by the workbench issue."""
