"""HP3 core."""
from .offline import keep_onnxruntime_offline

# First thing on import: onnxruntime reads its telemetry switch only when it is itself imported.
keep_onnxruntime_offline()
