// Camera scanning where the browser has no BarcodeDetector of its own: ZXing-C++ in WebAssembly,
// loaded only when a verifier opens the camera, its .wasm served by the box (never a CDN).
export { BarcodeDetector, setZXingModuleOverrides } from "barcode-detector/ponyfill";
