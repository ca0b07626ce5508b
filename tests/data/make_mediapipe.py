"""Regenerate the MediaPipe test models: real pretrained edge detectors shipped inside the `mediapipe` 0.10.14
wheel (`mediapipe/modules/*/*.tflite`), converted by tf2onnx's TFLite path as edge pipelines convert them
(NHWC with Transposes, residual channel growth written as a zero Pad on the channel axis before an Add):
- mediapipe_face_detection_short_range.onnx: BlazeFace, short-range face detection (128×128);
- mediapipe_palm_detection_lite.onnx: palm detection, lite (192×192).

Not run by the tests (TensorFlow is not a dependency). In a separate environment:
    pip install tensorflow-cpu==2.15.1 tf2onnx==1.16.1 "onnx<1.17" "numpy<2"
    pip download --no-deps mediapipe==0.10.14 -d wheels
    python tests/data/make_mediapipe.py wheels/mediapipe-0.10.14-*.whl
"""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = {"face_detection/face_detection_short_range": "mediapipe_face_detection_short_range.onnx",
          "palm_detection/palm_detection_lite": "mediapipe_palm_detection_lite.onnx"}

with zipfile.ZipFile(sys.argv[1]) as wheel, tempfile.TemporaryDirectory() as tmp:
    for member, target in MODELS.items():
        tflite = Path(wheel.extract(f"mediapipe/modules/{member}.tflite", tmp))
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tflite), "--opset", "13",
                        "--output", str(Path(__file__).with_name(target))], check=True)
