// Tessera explorer: check a receipt in the visitor's own browser. Nothing is sent anywhere:
// the receipt is parsed here, its canonical bytes rebuilt here (keys sorted, no spaces,
// UTF-8, as tessera.protocol.canonical does), and both Ed25519 signatures are verified with
// the browser's WebCrypto. The page says which check failed when one does.
(function () {
  "use strict";
  var RECEIPT_DOMAIN = "tessera/receipt/v1";
  var COUNTERSIGN_DOMAIN = "tessera/receipt-countersign/v1";
  var form = document.getElementById("receipt-form");
  var out = document.getElementById("receipt-result");
  if (!form || !out) return;

  // JSON.parse that keeps integers beyond 2^53 exact (as BigInt) where the browser gives
  // revivers the source text; where it does not, such a receipt is refused, not misread.
  function parse(text) {
    var unsafe = false;
    var value = JSON.parse(text, function (key, v, context) {
      if (typeof v === "number" && Number.isInteger(v) && !Number.isSafeInteger(v)) {
        if (context && typeof context.source === "string" && /^-?\d+$/.test(context.source)) {
          return BigInt(context.source);
        }
        unsafe = true;
      }
      return v;
    });
    if (unsafe) throw new Error("a number in it is too large for this browser to read exactly");
    return value;
  }

  function canonical(v) {
    if (v === null) return "null";
    if (typeof v === "bigint") return v.toString();
    if (typeof v === "number") {
      if (!isFinite(v)) throw new Error("not a finite number");
      return JSON.stringify(v);
    }
    if (typeof v === "string" || typeof v === "boolean") return JSON.stringify(v);
    if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
    var keys = Object.keys(v).sort(function (a, b) {
      // Code point order, as Python's sort_keys.
      var ca = Array.from(a), cb = Array.from(b);
      for (var i = 0; i < Math.min(ca.length, cb.length); i++) {
        var d = ca[i].codePointAt(0) - cb[i].codePointAt(0);
        if (d !== 0) return d;
      }
      return ca.length - cb.length;
    });
    return "{" + keys.map(function (k) { return JSON.stringify(k) + ":" + canonical(v[k]); }).join(",") + "}";
  }

  function hex(text, bytes, what) {
    if (typeof text !== "string" || text.length !== bytes * 2 || !/^[0-9a-f]+$/.test(text)) {
      throw new Error(what + " is not " + bytes * 2 + " lowercase hex characters");
    }
    var out = new Uint8Array(bytes);
    for (var i = 0; i < bytes; i++) out[i] = parseInt(text.substr(i * 2, 2), 16);
    return out;
  }

  async function verify(publicKey, domain, payload, signature, what) {
    var key = await crypto.subtle.importKey(
      "raw", hex(publicKey, 32, what + " key"), { name: "Ed25519" }, false, ["verify"]);
    var message = new TextEncoder().encode(domain + "\n" + canonical(payload));
    return crypto.subtle.verify({ name: "Ed25519" }, key, hex(signature, 64, what + " signature"), message);
  }

  function line(ok, text) {
    var p = document.createElement("p");
    p.className = ok === null ? "na" : ok ? "ok" : "bad";
    p.textContent = (ok === null ? "• " : ok ? "✓ " : "✗ ") + text;
    p.setAttribute("data-check", ok === null ? "note" : ok ? "pass" : "fail");
    out.appendChild(p);
  }

  async function check(text) {
    out.textContent = "";
    var signed;
    try {
      signed = parse(text);
    } catch (err) {
      line(false, "not JSON: " + err.message);
      return "fail";
    }
    if (!signed || typeof signed !== "object" || !signed.receipt || typeof signed.receipt !== "object") {
      line(false, "not a Tessera receipt: it has no \"receipt\" object (paste the body of GET /v1/receipts/REQUEST_ID)");
      return "fail";
    }
    if (!window.crypto || !crypto.subtle) {
      line(false, "this page is not in a secure context (https or localhost), so the browser offers no WebCrypto; check it with `tessera receipt verify FILE`");
      return "fail";
    }
    var receipt = signed.receipt;
    var verdict = "pass";
    try {
      var provider = await verify(receipt.provider_id, RECEIPT_DOMAIN, receipt,
        signed.provider_signature, "the provider's");
      line(provider, provider ? "the provider's signature verifies (provider " + receipt.provider_id + ")"
        : "the provider's signature does not verify: the receipt was changed after the provider signed it, or another key signed it");
      if (!provider) verdict = "fail";
      var payload = {
        receipt: receipt,
        provider_signature: signed.provider_signature,
        gateway_id: signed.gateway_id,
        countersigned_at_ms: signed.countersigned_at_ms,
      };
      var gateway = await verify(signed.gateway_public_key, COUNTERSIGN_DOMAIN, payload,
        signed.gateway_signature, "the gateway's");
      line(gateway, gateway ? "the gateway's countersignature verifies (gateway " + signed.gateway_id + ")"
        : "the gateway's countersignature does not verify");
      if (!gateway) verdict = "fail";
    } catch (err) {
      var unsupported = err && (err.name === "NotSupportedError" || /Ed25519|algorithm/i.test(String(err.message)));
      line(false, unsupported
        ? "this browser has no Ed25519 in WebCrypto; check it with `tessera receipt verify FILE`"
        : "cannot check: " + err.message);
      return "fail";
    }
    var expectedKey = form.getAttribute("data-gateway-key");
    if (expectedKey) {
      var ours = signed.gateway_public_key === expectedKey;
      line(ours, ours ? "countersigned by this gateway's key"
        : "countersigned by another gateway's key (" + String(signed.gateway_public_key).slice(0, 16) + "…), not this one's");
      if (!ours) verdict = "fail";
    }
    var expectedRequest = form.getAttribute("data-request");
    if (expectedRequest) {
      var same = receipt.request_id === expectedRequest;
      line(same, same ? "it is this page's request" : "it is the receipt of another request (" + receipt.request_id + ")");
      if (!same) verdict = "fail";
    }
    if (verdict === "pass") {
      line(null, receipt.model + ", " + receipt.prompt_tokens + " prompt + " + receipt.completion_tokens +
        " completion tokens, " + (receipt.finished_at_ms - receipt.started_at_ms) + " ms; output sha256 " + receipt.output_sha256);
    }
    return verdict;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    check(document.getElementById("receipt").value).then(function (verdict) {
      out.setAttribute("data-verdict", verdict);
    });
  });
})();
