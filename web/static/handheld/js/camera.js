// Camera scanning for devices without a scanner: the browser's own BarcodeDetector where it has one,
// otherwise ZXing in WebAssembly (web/vendor/decoder.js), loaded only now, its .wasm from the box.

const FORMATS = ["ean_13", "ean_8", "upc_a", "upc_e", "code_128", "code_39", "itf", "qr_code", "data_matrix"];

async function detector() {
  if ("BarcodeDetector" in self) {
    const supported = await self.BarcodeDetector.getSupportedFormats();
    const formats = FORMATS.filter((f) => supported.includes(f));
    if (formats.length) return new self.BarcodeDetector({ formats });
  }
  const module = await import("/static/vendor/decoder.js");
  module.setZXingModuleOverrides({
    locateFile: (path, prefix) => (path.endsWith(".wasm") ? "/static/vendor/zxing_reader.wasm" : prefix + path),
  });
  return new module.BarcodeDetector({ formats: FORMATS });
}

/** Open the camera in ``dialog`` and resolve with the first code read, or null when closed. */
export async function readCode(dialog) {
  const video = dialog.querySelector("video");
  const status = dialog.querySelector("[data-camera-status]");
  let stream = null;
  let stop = false;
  dialog.showModal();
  const closed = new Promise((resolve) => dialog.addEventListener("close", () => resolve(null), { once: true }));
  try {
    status.textContent = "Starting the camera…";
    const reader = await detector();
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    video.srcObject = stream;
    await video.play();
    status.textContent = "Point the camera at a barcode";
    const found = new Promise((resolve) => {
      const look = async () => {
        if (stop) return;
        try {
          const codes = await reader.detect(video);
          if (codes.length) return resolve(codes[0].rawValue);
        } catch {
          // a frame that could not be read; the next one may
        }
        setTimeout(look, 120);
      };
      look();
    });
    const code = await Promise.race([found, closed]);
    return code;
  } catch (error) {
    status.textContent = `The camera cannot be used: ${error.message}`;
    return closed;
  } finally {
    stop = true;
    for (const track of stream?.getTracks() ?? []) track.stop();
    if (dialog.open) dialog.close();
  }
}
