// Builds the explorer into the Python package (src/geofm/server/static), served by `geofm serve`.
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  build: {
    outDir: "../src/geofm/server/static",
    emptyOutDir: true,
    chunkSizeWarningLimit: 1500,
  },
  server: { proxy: { "/api": "http://127.0.0.1:8000" } },
});
