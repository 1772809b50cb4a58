// Starts fauxqs bound to loopback only, without per-request logging.
//
// fauxqs 1.9.2 always listens on 0.0.0.0 (FAUXQS_HOST only names the host in queue URLs) and its
// CLI logs every request, which costs CPU the benchmarked client needs. FAUXQS_PORT and
// FAUXQS_HOST are read by fauxqs itself.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (options, ...rest) {
  if (options && typeof options === "object" && options.host === "0.0.0.0") {
    options = { ...options, host: "127.0.0.1" };
  }
  return listen.call(this, options, ...rest);
};

const { startFauxqs } = await import("fauxqs");
await startFauxqs({ logger: false });
