var __create = Object.create;
var __defProp = Object.defineProperty;
var __getOwnPropDesc = Object.getOwnPropertyDescriptor;
var __getOwnPropNames = Object.getOwnPropertyNames;
var __getProtoOf = Object.getPrototypeOf;
var __hasOwnProp = Object.prototype.hasOwnProperty;
var __commonJS = (cb, mod) => function __require() {
  try {
    return mod || (0, cb[__getOwnPropNames(cb)[0]])((mod = { exports: {} }).exports, mod), mod.exports;
  } catch (e) {
    throw mod = 0, e;
  }
};
var __copyProps = (to, from, except, desc) => {
  if (from && typeof from === "object" || typeof from === "function") {
    for (let key of __getOwnPropNames(from))
      if (!__hasOwnProp.call(to, key) && key !== except)
        __defProp(to, key, { get: () => from[key], enumerable: !(desc = __getOwnPropDesc(from, key)) || desc.enumerable });
  }
  return to;
};
var __toESM = (mod, isNodeMode, target) => (target = mod != null ? __create(__getProtoOf(mod)) : {}, __copyProps(
  // If the importer is in node compatibility mode or this is not an ESM
  // file that has been converted to a CommonJS file using a Babel-
  // compatible transform (i.e. "__esModule" has not been set), then set
  // "default" to the CommonJS "module.exports" for node compatibility.
  isNodeMode || !mod || !mod.__esModule ? __defProp(target, "default", { value: mod, enumerable: true }) : target,
  mod
));

// node_modules/unicount/index.js
var require_unicount = __commonJS({
  "node_modules/unicount/index.js"(exports) {
    "use strict";
    Object.defineProperty(exports, "__esModule", { value: true });
    exports.uniToStrPos = exports.strPosToUni = void 0;
    exports.strPosToUni = (s, strOffset = s.length) => {
      let pairs = 0;
      let i = 0;
      for (; i < strOffset; i++) {
        const code = s.charCodeAt(i);
        if (code >= 55296 && code <= 57343) {
          pairs++;
          i++;
        }
      }
      if (i !== strOffset)
        throw Error("Invalid offset - splits unicode bytes");
      return i - pairs;
    };
    exports.uniToStrPos = (s, uniOffset) => {
      let pos = 0;
      for (; uniOffset > 0; uniOffset--) {
        const code = s.charCodeAt(pos);
        pos += code >= 55296 && code <= 57343 ? 2 : 1;
      }
      return pos;
    };
  }
});

// node_modules/ot-text-unicode/dist/type.js
var require_type = __commonJS({
  "node_modules/ot-text-unicode/dist/type.js"(exports) {
    "use strict";
    Object.defineProperty(exports, "__esModule", { value: true });
    exports.uniSlice = exports.dlen = exports.eachOp = void 0;
    var unicount_1 = require_unicount();
    var debugMode = false;
    var checkOp = (op) => {
      if (!Array.isArray(op))
        throw Error("Op must be an array of components");
      let last = null;
      for (let i = 0; i < op.length; i++) {
        const c = op[i];
        switch (typeof c) {
          case "object":
            if (typeof c.d !== "number" && typeof c.d !== "string")
              throw Error("Delete must be number or string");
            if (exports.dlen(c.d) <= 0)
              throw Error("Deletes must not be empty");
            break;
          case "string":
            if (!(c.length > 0))
              throw Error("Inserts cannot be empty");
            break;
          case "number":
            if (!(c > 0))
              throw Error("Skip components must be >0");
            if (typeof last === "number")
              throw Error("Adjacent skip components should be combined");
            break;
        }
        last = c;
      }
      if (typeof last === "number")
        throw Error("Op has a trailing skip");
    };
    function eachOp(op, fn) {
      let prePos = 0, postPos = 0;
      for (let i = 0; i < op.length; i++) {
        const c = op[i];
        fn(c, prePos, postPos);
        switch (typeof c) {
          case "object":
            prePos += exports.dlen(c.d);
            break;
          case "string":
            postPos += unicount_1.strPosToUni(c);
            break;
          case "number":
            prePos += c;
            postPos += c;
            break;
        }
      }
    }
    exports.eachOp = eachOp;
    function mapOp(op, fn) {
      const newOp = [];
      const append = makeAppend(newOp);
      eachOp(op, (c, prePos, postPos) => {
        append(fn(c, prePos, postPos));
      });
      return trim(newOp);
    }
    var id = (x) => x;
    var normalize = (op) => {
      return mapOp(op, id);
    };
    exports.dlen = (d) => typeof d === "number" ? d : unicount_1.strPosToUni(d);
    var makeAppend = (op) => (component) => {
      if (!component || component.d === 0 || component.d === "") {
      } else if (op.length === 0) {
        op.push(component);
      } else if (typeof component === typeof op[op.length - 1]) {
        if (typeof component === "object") {
          const last = op[op.length - 1];
          last.d = typeof last.d === "string" && typeof component.d === "string" ? last.d + component.d : exports.dlen(last.d) + exports.dlen(component.d);
        } else {
          op[op.length - 1] += component;
        }
      } else {
        op.push(component);
      }
    };
    var componentLength = (c) => typeof c === "number" ? c : typeof c === "string" ? unicount_1.strPosToUni(c) : typeof c.d === "number" ? c.d : unicount_1.strPosToUni(c.d);
    exports.uniSlice = (s, startUni, endUni) => {
      const start = unicount_1.uniToStrPos(s, startUni);
      const end = endUni == null ? Infinity : unicount_1.uniToStrPos(s, endUni);
      return s.slice(start, end);
    };
    var dslice = (d, start, end) => typeof d === "number" ? end == null ? d - start : Math.min(d, end) - start : exports.uniSlice(d, start, end);
    var makeTake = (op) => {
      let idx = 0;
      let offset = 0;
      const take = (n, indivisableField) => {
        if (idx === op.length)
          return n === -1 ? null : n;
        const c = op[idx];
        let part;
        if (typeof c === "number") {
          if (n === -1 || c - offset <= n) {
            part = c - offset;
            ++idx;
            offset = 0;
            return part;
          } else {
            offset += n;
            return n;
          }
        } else if (typeof c === "string") {
          if (n === -1 || indivisableField === "i" || unicount_1.strPosToUni(c.slice(offset)) <= n) {
            part = c.slice(offset);
            ++idx;
            offset = 0;
            return part;
          } else {
            const offset2 = offset + unicount_1.uniToStrPos(c.slice(offset), n);
            part = c.slice(offset, offset2);
            offset = offset2;
            return part;
          }
        } else {
          if (n === -1 || indivisableField === "d" || exports.dlen(c.d) - offset <= n) {
            part = { d: dslice(c.d, offset) };
            ++idx;
            offset = 0;
            return part;
          } else {
            let result = dslice(c.d, offset, offset + n);
            offset += n;
            return { d: result };
          }
        }
      };
      const peek = () => op[idx];
      return { take, peek };
    };
    var trim = (op) => {
      if (op.length > 0 && typeof op[op.length - 1] === "number") {
        op.pop();
      }
      return op;
    };
    function transform(op1, op2, side) {
      if (side !== "left" && side !== "right") {
        throw Error("side (" + side + ") must be 'left' or 'right'");
      }
      checkOp(op1);
      checkOp(op2);
      const newOp = [];
      const append = makeAppend(newOp);
      const { take, peek } = makeTake(op1);
      for (let i = 0; i < op2.length; i++) {
        const c2 = op2[i];
        let length, c1;
        switch (typeof c2) {
          case "number":
            length = c2;
            while (length > 0) {
              c1 = take(length, "i");
              append(c1);
              if (typeof c1 !== "string") {
                length -= componentLength(c1);
              }
            }
            break;
          case "string":
            if (side === "left") {
              if (typeof peek() === "string") {
                append(take(-1));
              }
            }
            append(unicount_1.strPosToUni(c2));
            break;
          case "object":
            length = exports.dlen(c2.d);
            while (length > 0) {
              c1 = take(length, "i");
              switch (typeof c1) {
                case "number":
                  length -= c1;
                  break;
                case "string":
                  append(c1);
                  break;
                case "object":
                  length -= exports.dlen(c1.d);
              }
            }
            break;
        }
      }
      let c;
      while (c = take(-1))
        append(c);
      if (debugMode && isInvertible(op1) && isInvertible(op2) && !isInvertible(newOp)) {
        throw Error("Internal error - composed operation should also be invertible");
      }
      return trim(newOp);
    }
    function compose(op1, op2) {
      checkOp(op1);
      checkOp(op2);
      const result = [];
      const append = makeAppend(result);
      const { take } = makeTake(op1);
      for (let i = 0; i < op2.length; i++) {
        const component = op2[i];
        let length, chunk;
        switch (typeof component) {
          case "number":
            length = component;
            while (length > 0) {
              chunk = take(length, "d");
              append(chunk);
              if (typeof chunk !== "object") {
                length -= componentLength(chunk);
              }
            }
            break;
          case "string":
            append(component);
            break;
          case "object":
            length = exports.dlen(component.d);
            let offset = 0;
            while (offset < length) {
              chunk = take(length - offset, "d");
              switch (typeof chunk) {
                case "number":
                  append({ d: dslice(component.d, offset, offset + chunk) });
                  offset += chunk;
                  break;
                case "string":
                  offset += unicount_1.strPosToUni(chunk);
                  break;
                case "object":
                  append(chunk);
              }
            }
            break;
        }
      }
      let c;
      while (c = take(-1))
        append(c);
      if (debugMode && isInvertible(op1) && isInvertible(op2) && !isInvertible(result)) {
        throw Error("Internal error - composed operation should also be invertible");
      }
      return trim(result);
    }
    var transformPosition = (cursor, op) => {
      let pos = 0;
      for (let i = 0; i < op.length && cursor > pos; i++) {
        const c = op[i];
        switch (typeof c) {
          case "number": {
            pos += c;
            break;
          }
          case "string":
            const offset = unicount_1.strPosToUni(c);
            pos += offset;
            cursor += offset;
            break;
          case "object":
            cursor -= Math.min(exports.dlen(c.d), cursor - pos);
            break;
        }
      }
      return cursor;
    };
    var transformSelection = (selection, op) => typeof selection === "number" ? transformPosition(selection, op) : selection.map((s) => transformPosition(s, op));
    function makeInvertible(op, doc, ropeImpl) {
      return mapOp(op, (c, prePos) => typeof c === "object" && typeof c.d === "number" ? { d: ropeImpl.slice(doc, prePos, prePos + c.d) } : c);
    }
    function invert(op) {
      return mapOp(op, (c) => {
        switch (typeof c) {
          case "object":
            if (typeof c.d === "number") {
              throw Error("Cannot invert text op: Deleted characters missing from operation. makeInvertible must be called first.");
            } else
              return c.d;
          // delete -> insert
          case "string":
            return { d: c };
          // Insert -> delete
          case "number":
            return c;
        }
      });
    }
    function stripInvertible(op) {
      return mapOp(op, (c) => typeof c === "object" && typeof c.d === "string" ? { d: unicount_1.strPosToUni(c.d) } : c);
    }
    function isInvertible(op) {
      let invertible = true;
      eachOp(op, (c) => {
        if (typeof c === "object" && typeof c.d === "number")
          invertible = false;
      });
      return invertible;
    }
    function makeType(ropeImpl) {
      return {
        name: "text-unicode",
        uri: "http://sharejs.org/types/text-unicode",
        trim,
        normalize,
        checkOp,
        /** Create a new text snapshot.
         *
         * @param {string} initial - initial snapshot data. Optional. Defaults to ''.
         * @returns {Snap} Initial document snapshot object
         */
        create(initial = "") {
          if (typeof initial !== "string") {
            throw Error("Initial data must be a string");
          }
          return ropeImpl.create(initial);
        },
        /** Apply an operation to a document snapshot
         */
        apply(str, op) {
          checkOp(op);
          const builder = ropeImpl.builder(str);
          for (let i = 0; i < op.length; i++) {
            const component = op[i];
            switch (typeof component) {
              case "number":
                builder.skip(component);
                break;
              case "string":
                builder.append(component);
                break;
              case "object":
                builder.del(exports.dlen(component.d));
                break;
            }
          }
          return builder.build();
        },
        transform,
        compose,
        transformPosition,
        transformSelection,
        isInvertible,
        makeInvertible(op, doc) {
          return makeInvertible(op, doc, ropeImpl);
        },
        stripInvertible,
        invert,
        invertWithDoc(op, doc) {
          return invert(makeInvertible(op, doc, ropeImpl));
        },
        isNoop: (op) => op.length === 0
      };
    }
    exports.default = makeType;
  }
});

// node_modules/ot-text-unicode/dist/api.js
var require_api = __commonJS({
  "node_modules/ot-text-unicode/dist/api.js"(exports) {
    "use strict";
    Object.defineProperty(exports, "__esModule", { value: true });
    var type_1 = require_type();
    var unicount_1 = require_unicount();
    function api(getSnapshot, submitOp) {
      return {
        // Returns the text content of the document
        get: getSnapshot,
        // Returns the number of characters in the string
        getLength() {
          return getSnapshot().length;
        },
        // Insert the specified text at the given position in the document
        insert(pos, text, callback) {
          const uniPos = unicount_1.strPosToUni(getSnapshot(), pos);
          return submitOp([uniPos, text], callback);
        },
        remove(pos, lengthOrContent, callback) {
          const uniPos = unicount_1.strPosToUni(getSnapshot(), pos);
          return submitOp([uniPos, { d: lengthOrContent }], callback);
        },
        // When you use this API, you should implement these two methods
        // in your editing context.
        //onInsert: function(pos, text) {},
        //onRemove: function(pos, removedLength) {},
        _onOp(op) {
          type_1.eachOp(op, (component, prePos, postPos) => {
            switch (typeof component) {
              case "string":
                if (this.onInsert)
                  this.onInsert(postPos, component);
                break;
              case "object":
                const dl = type_1.dlen(component.d);
                if (this.onRemove)
                  this.onRemove(postPos, dl);
            }
          });
        },
        onInsert: null,
        onRemove: null
      };
    }
    exports.default = api;
    api.provides = { text: true };
  }
});

// node_modules/ot-text-unicode/dist/index.js
var require_dist = __commonJS({
  "node_modules/ot-text-unicode/dist/index.js"(exports) {
    "use strict";
    var __createBinding = exports && exports.__createBinding || (Object.create ? (function(o, m, k, k2) {
      if (k2 === void 0) k2 = k;
      Object.defineProperty(o, k2, { enumerable: true, get: function() {
        return m[k];
      } });
    }) : (function(o, m, k, k2) {
      if (k2 === void 0) k2 = k;
      o[k2] = m[k];
    }));
    var __setModuleDefault = exports && exports.__setModuleDefault || (Object.create ? (function(o, v) {
      Object.defineProperty(o, "default", { enumerable: true, value: v });
    }) : function(o, v) {
      o["default"] = v;
    });
    var __importStar = exports && exports.__importStar || function(mod) {
      if (mod && mod.__esModule) return mod;
      var result = {};
      if (mod != null) {
        for (var k in mod) if (Object.hasOwnProperty.call(mod, k)) __createBinding(result, mod, k);
      }
      __setModuleDefault(result, mod);
      return result;
    };
    var __importDefault = exports && exports.__importDefault || function(mod) {
      return mod && mod.__esModule ? mod : { "default": mod };
    };
    Object.defineProperty(exports, "__esModule", { value: true });
    exports.type = exports.remove = exports.insert = void 0;
    var unicount_1 = require_unicount();
    var type_1 = __importStar(require_type());
    var api_1 = __importDefault(require_api());
    var ropeImplUnicodeString = {
      create(s) {
        return s;
      },
      toString(s) {
        return s;
      },
      builder(oldDoc) {
        if (typeof oldDoc !== "string")
          throw Error("Invalid document snapshot: " + oldDoc);
        const newDoc = [];
        return {
          skip(n) {
            let offset = unicount_1.uniToStrPos(oldDoc, n);
            if (offset > oldDoc.length)
              throw Error("The op is too long for this document");
            newDoc.push(oldDoc.slice(0, offset));
            oldDoc = oldDoc.slice(offset);
          },
          append(s) {
            newDoc.push(s);
          },
          del(n) {
            oldDoc = oldDoc.slice(unicount_1.uniToStrPos(oldDoc, n));
          },
          build() {
            return newDoc.join("") + oldDoc;
          }
        };
      },
      slice: type_1.uniSlice
    };
    var textString = type_1.default(ropeImplUnicodeString);
    var type = Object.assign(Object.assign({}, textString), { api: api_1.default });
    exports.type = type;
    exports.insert = (pos, text) => text.length === 0 ? [] : pos === 0 ? [text] : [pos, text];
    exports.remove = (pos, textOrLen) => type_1.dlen(textOrLen) === 0 ? [] : pos === 0 ? [{ d: textOrLen }] : [pos, { d: textOrLen }];
    var type_2 = require_type();
    Object.defineProperty(exports, "makeType", { enumerable: true, get: function() {
      return type_2.default;
    } });
  }
});

// src/collab-client.js
var import_ot_text_unicode = __toESM(require_dist(), 1);
var DEFAULT_BACKOFF = { initial: 250, max: 1e4, factor: 2 };
var FATAL_CODES = /* @__PURE__ */ new Set(["not_found", "document_deleted", "unauthorized"]);
var ROLES = /* @__PURE__ */ new Set(["read", "write", "admin"]);
var REFRESH_MARGIN_MS = 6e4;
var REFRESH_FRACTION = 0.75;
var REFRESH_RETRY_MS = 5e3;
var MAX_TIMER_MS = 2 ** 31 - 1;
function refreshDelay(exp, now = Date.now()) {
  const left = exp * 1e3 - now;
  if (left <= 0) return 0;
  return Math.max(0, Math.round(Math.max(left - REFRESH_MARGIN_MS, left * REFRESH_FRACTION)));
}
function authReason(message) {
  const m = String(message || "").toLowerCase();
  if (m.includes("revoked")) return "revoked";
  if (m.includes("expired")) return "expired";
  return null;
}
var CLIENT_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
function codePointLength(s) {
  let n = s.length;
  for (let i = 0; i < s.length - 1; i++) {
    const c = s.charCodeAt(i);
    if (c >= 55296 && c <= 56319) {
      const d = s.charCodeAt(i + 1);
      if (d >= 56320 && d <= 57343) {
        n--;
        i++;
      }
    }
  }
  return n;
}
function diffOp(from, to) {
  if (from === to) return [];
  const a = Array.from(from);
  const b = Array.from(to);
  let pre = 0;
  while (pre < a.length && pre < b.length && a[pre] === b[pre]) pre++;
  let suf = 0;
  while (suf < a.length - pre && suf < b.length - pre && a[a.length - 1 - suf] === b[b.length - 1 - suf]) suf++;
  const op = [];
  if (pre) op.push(pre);
  const del = a.length - pre - suf;
  if (del) op.push({ d: del });
  const ins = b.slice(pre, b.length - suf).join("");
  if (ins) op.push(ins);
  return import_ot_text_unicode.type.normalize(op);
}
function randomId() {
  const bytes = new Uint8Array(12);
  (globalThis.crypto || {}).getRandomValues ? globalThis.crypto.getRandomValues(bytes) : bytes.forEach((_, i) => bytes[i] = Math.floor(Math.random() * 256));
  return "c" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
function tokenSubject(token) {
  if (typeof token !== "string") return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(part.padEnd(Math.ceil(part.length / 4) * 4, "="));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    return claims && typeof claims.sub === "string" ? claims.sub : null;
  } catch {
    return null;
  }
}
function defaultStorage() {
  try {
    if (globalThis.sessionStorage) return globalThis.sessionStorage;
  } catch {
  }
  return null;
}
function isOp(op) {
  return Array.isArray(op);
}
function describeError(code, fallback) {
  switch (code) {
    case "document_deleted":
      return "This document has been deleted.";
    case "not_found":
      return "This document does not exist (it may have been deleted).";
    case "too_large":
      return "That change is too large: the document would exceed the size limit. It was not saved.";
    case "rate_limited":
      return "Too many changes too quickly: the server is slowing this page down. Your edits will be retried.";
    case "unavailable":
      return "The server could not save a change just now. It will be retried.";
    case "invalid_op":
      return "The server refused a change from this page. The document was reloaded.";
    case "rev_out_of_range":
      return "This page fell out of step with the server. Reloading the document.";
    case "unauthorized":
      switch (authReason(fallback)) {
        case "revoked":
          return "Your access to this document was revoked.";
        case "expired":
          return "Your access has expired.";
        default:
          return "You are not signed in, or your access is not valid.";
      }
    case "forbidden":
      return "You do not have access to this document.";
    case "read_only":
      return "You can only read this document: your unsaved edits were discarded.";
    case "token_refresh_failed":
      return "Could not renew access to this document. Retrying.";
    case "bad_message":
      return "The server did not understand a message from this page.";
    case "lost_edits":
      return "Some unsynced edits could not be merged with the server copy and were dropped.";
    default:
      return fallback || "Something went wrong talking to the server.";
  }
}
var CollabClient = class extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.docId
   * @param {string} [options.url] base URL of the server (http(s)://host or
   *   ws(s)://host); defaults to the page's origin.
   * @param {string} [options.clientId] a fixed client id (else persisted or generated)
   * @param {Storage|null} [options.storage] where client id and next seq live
   *   (default sessionStorage; null: not persisted)
   * @param {function} [options.WebSocket] WebSocket constructor
   * @param {{initial:number,max:number,factor:number}} [options.backoff]
   * @param {number} [options.offlineAfter] failed attempts before `offline` (default 2)
   * @param {boolean} [options.autoConnect] connect now (default true)
   * @param {string} [options.token] access token (JWT), sent as `?token=`
   * @param {() => Promise<string>} [options.refreshToken] returns a new token
   *   for the same user; called before the current one expires
   */
  constructor(options) {
    super();
    if (!options || typeof options.docId !== "string") throw new TypeError("docId is required");
    this.docId = options.docId;
    this.baseUrl = options.url || (globalThis.location ? globalThis.location.origin : "http://127.0.0.1:8000");
    this.storage = options.storage === void 0 ? defaultStorage() : options.storage;
    this.WebSocketImpl = options.WebSocket || globalThis.WebSocket;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff || {} };
    this.offlineAfter = options.offlineAfter ?? 2;
    this.token = typeof options.token === "string" && options.token ? options.token : null;
    this.refreshToken = typeof options.refreshToken === "function" ? options.refreshToken : null;
    this.role = null;
    this.exp = null;
    this._sub = tokenSubject(this.token);
    const claimed = this._claim();
    const saved = (claimed.sub ?? null) === this._sub ? claimed : {};
    this._fixedClientId = !!options.clientId;
    this.clientId = options.clientId || saved.clientId || randomId();
    if (!CLIENT_ID_RE.test(this.clientId)) throw new TypeError("client id must match [A-Za-z0-9_-]{1,64}");
    this.nextSeq = saved.clientId === this.clientId && saved.nextSeq > 0 ? saved.nextSeq : 1;
    this._reidentified = false;
    this.content = null;
    this.rev = null;
    this.inflight = null;
    this.buffer = null;
    this.bufferEdits = 0;
    this.peers = /* @__PURE__ */ new Map();
    this.status = "closed";
    this._ws = null;
    this._attempts = 0;
    this._timer = null;
    this._retryTimer = null;
    this._retryDelay = 0;
    this._paused = false;
    this._stopped = false;
    this._presence = null;
    this._presenceDirty = false;
    this._reload = false;
    this._refreshTimer = null;
    this._refreshing = null;
    this._tokenRenewed = false;
    this._resyncWhenIdle = false;
    this._authPending = 0;
    if (globalThis.addEventListener) {
      this._onOnline = () => {
        if (!this._ws && !this._stopped && !this._paused) {
          clearTimeout(this._timer);
          this._open();
        }
      };
      globalThis.addEventListener("online", this._onOnline);
      if (this.storage) {
        this._onPageHide = () => this._save();
        this._onPageShow = (e) => {
          if (e && e.persisted && !this._stopped) this._claim();
        };
        globalThis.addEventListener("pagehide", this._onPageHide);
        globalThis.addEventListener("pageshow", this._onPageShow);
      }
    }
    if (options.autoConnect !== false) this.connect();
  }
  /** Unsynced local edits (in flight or buffered). */
  get pending() {
    return (this.inflight ? this.inflight.edits : 0) + this.bufferEdits;
  }
  get connected() {
    return this.status === "connected";
  }
  /** True while the server has given this connection the `read` role. */
  get readOnly() {
    return this.role === "read";
  }
  // ---- public API -------------------------------------------------------
  /** Open the connection (again). */
  connect() {
    this._stopped = false;
    this._paused = false;
    if (this._ws) return;
    clearTimeout(this._timer);
    this._open();
  }
  /** Close for good: no more reconnects. Pending edits stay in memory. */
  close() {
    if (!this._stopped) this._save();
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._authRetryTimer);
    if (this._onOnline) globalThis.removeEventListener("online", this._onOnline);
    if (this._onPageHide) {
      globalThis.removeEventListener("pagehide", this._onPageHide);
      globalThis.removeEventListener("pageshow", this._onPageShow);
      this._onPageHide = null;
    }
    this._drop();
    this._setStatus("closed");
  }
  /**
   * Work offline: close the socket and stop reconnecting until `goOnline()`.
   * Local edits are kept and sent, exactly once, when back online.
   */
  goOffline() {
    if (this._stopped) return;
    this._paused = true;
    clearTimeout(this._timer);
    clearTimeout(this._retryTimer);
    this._drop();
    this._setStatus("offline");
  }
  goOnline() {
    if (this._stopped || !this._paused) return;
    this._paused = false;
    this._attempts = 0;
    this._open();
  }
  /**
   * Apply a local edit (a text-unicode op against `content`) and queue it.
   * Throws if the op does not apply, or if the role is `read` (the error's
   * `code` is 'read_only'); then nothing changes.
   */
  submitOp(op) {
    if (this.content === null) throw new Error("the document is not loaded yet");
    if (this.readOnly) {
      const e = new Error("read only: this connection may not edit the document");
      e.code = "read_only";
      throw e;
    }
    const next = import_ot_text_unicode.type.apply(this.content, op);
    this.content = next;
    this._transformPeers(op);
    this.buffer = this.buffer ? import_ot_text_unicode.type.compose(this.buffer, op) : op;
    this.bufferEdits++;
    this._flush();
    this._emitStatus();
  }
  /**
   * Share our selection ([anchor, head] in code points, or null) and user
   * ({name, color}). The latest value is (re)sent whenever connected.
   */
  setPresence(selection, user) {
    this._presence = { selection: selection ? [selection[0], selection[1]] : null, user: user || this._presence && this._presence.user };
    this._presenceDirty = true;
    this._sendPresence();
  }
  /**
   * Use a new token (same user): sent at once as an `auth` frame when
   * connected, and used for every later connection.
   */
  setToken(token) {
    if (typeof token !== "string" || !token) throw new TypeError("token must be a non-empty string");
    this.token = token;
    this._sub = tokenSubject(token);
    this._tokenRenewed = true;
    clearTimeout(this._refreshTimer);
    this._dispatch("token", { token });
    if (this._send({ type: "auth", token })) this._authPending++;
  }
  // ---- access tokens --------------------------------------------------------
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this.refreshToken || this.exp === null || this._stopped) return;
    const delay = refreshDelay(this.exp);
    this._refreshTimer = setTimeout(() => {
      if (refreshDelay(this.exp) > 0 && delay >= MAX_TIMER_MS) return this._scheduleRefresh();
      this._refresh();
    }, Math.min(delay, MAX_TIMER_MS));
  }
  /** Ask the page for a new token and use it; retried until the old one expires. */
  _refresh() {
    if (this._refreshing) return this._refreshing;
    if (this._stopped) return Promise.resolve(false);
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const run = async () => {
      let token = null;
      let failure = null;
      try {
        token = await this.refreshToken();
        if (typeof token !== "string" || !token) failure = "refreshToken() returned no token";
      } catch (e) {
        failure = String(e && e.message ? e.message : e);
      }
      this._refreshing = null;
      if (this._stopped) return false;
      if (failure) {
        this._emitError("token_refresh_failed", failure);
        const left = this.exp === null ? Infinity : this.exp * 1e3 - Date.now();
        const delay = left > 0 ? Math.max(1e3, Math.min(REFRESH_RETRY_MS, left / 4)) : REFRESH_RETRY_MS;
        clearTimeout(this._refreshTimer);
        this._refreshTimer = setTimeout(() => this._refresh(), delay);
        return false;
      }
      this.setToken(token);
      return true;
    };
    this._refreshing = run();
    return this._refreshing;
  }
  /** True when the token is known to expire within a few seconds and can be renewed. */
  _tokenStale() {
    return !!this.refreshToken && this.exp !== null && !this._tokenRenewed && this.exp * 1e3 - Date.now() < 5e3;
  }
  _setRole(role, exp) {
    const previousRole = this.role;
    const previousExp = this.exp;
    if (ROLES.has(role)) this.role = role;
    if (exp !== void 0) this.exp = typeof exp === "number" ? exp : null;
    if (this.role !== previousRole || this.exp !== previousExp) {
      this._dispatch("auth", { role: this.role, exp: this.exp, previousRole });
    }
    if (this.readOnly && previousRole !== "read") this._becameReadOnly();
    else if (!this.readOnly && previousRole === "read" && this._presence) {
      this._presenceDirty = true;
      this._sendPresence();
    }
  }
  /**
   * The role dropped to read: unsent edits would be refused. Drop them and
   * reload the server's content once the op in flight (if any) is answered.
   */
  _becameReadOnly() {
    const lost = this.bufferEdits;
    if (!this.buffer && !this.inflight) return;
    this.buffer = null;
    this.bufferEdits = 0;
    if (lost) this._emitError("read_only", `${lost} unsynced edits were dropped`);
    if (this.inflight) {
      this._resyncWhenIdle = true;
      this._reload = true;
    } else {
      this._reload = true;
      this._reconnectSoon();
    }
    this._emitStatus();
  }
  _newIdentity() {
    this.clientId = randomId();
    this.nextSeq = 1;
    if (this.inflight) {
      this.buffer = this.buffer ? import_ot_text_unicode.type.compose(this.inflight.op, this.buffer) : this.inflight.op;
      this.bufferEdits += this.inflight.edits;
      this.inflight = null;
    }
  }
  _stopFor(status) {
    this._stopped = true;
    clearTimeout(this._timer);
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._authRetryTimer);
    this._drop();
    if (this.peers.size) {
      this.peers = /* @__PURE__ */ new Map();
      this._dispatch("peers", { peers: this.peers });
    }
    this._setStatus(status);
  }
  // ---- connection ---------------------------------------------------------
  _wsUrl() {
    const u = new URL(this.baseUrl);
    if (u.protocol === "http:") u.protocol = "ws:";
    else if (u.protocol === "https:") u.protocol = "wss:";
    u.pathname = u.pathname.replace(/\/$/, "") + "/ws/documents/" + encodeURIComponent(this.docId);
    u.search = "";
    u.searchParams.set("client_id", this.clientId);
    if (this.rev !== null && !this._reload) u.searchParams.set("since", String(this.rev));
    if (this.token) u.searchParams.set("token", this.token);
    return u.toString();
  }
  _open(staleChecked = false) {
    if (this._stopped || this._paused || this._ws) return;
    if (!staleChecked && this._tokenStale()) {
      this._setStatus(this._disconnectedStatus());
      this._refresh().then(() => this._open(true));
      return;
    }
    this._setStatus(this.rev === null && this._attempts === 0 ? "connecting" : this._disconnectedStatus());
    let ws;
    try {
      ws = new this.WebSocketImpl(this._wsUrl());
    } catch (e) {
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._wsToken = this.token;
    this._authPending = 0;
    this._welcomed = false;
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      try {
        this._onMessage(msg);
      } catch (e) {
        this._emitError("client_error", String(e && e.message ? e.message : e));
        this._reconnectSoon();
      }
    };
    ws.onclose = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._scheduleReconnect();
    };
    ws.onerror = () => {
    };
  }
  _drop() {
    const ws = this._ws;
    this._ws = null;
    this._welcomed = false;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch {
      }
    }
  }
  _reconnectSoon() {
    this._drop();
    this._scheduleReconnect();
  }
  _scheduleReconnect() {
    clearTimeout(this._retryTimer);
    if (this._stopped || this._paused) return;
    this._attempts++;
    this._setStatus(this._disconnectedStatus());
    const { initial, max, factor } = this.backoff;
    const base = Math.min(max, initial * Math.pow(factor, Math.max(0, this._attempts - 1)));
    const delay = this._attempts === 1 ? Math.min(base, 100) : base * (0.75 + Math.random() * 0.5);
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delay);
  }
  _disconnectedStatus() {
    if (globalThis.navigator && globalThis.navigator.onLine === false) return "offline";
    return this._attempts > this.offlineAfter ? "offline" : "reconnecting";
  }
  _send(msg) {
    if (!this._ws || !this._welcomed || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(msg));
    return true;
  }
  // ---- messages -------------------------------------------------------------
  _onMessage(msg) {
    switch (msg.type) {
      case "welcome":
        return this._onWelcome(msg);
      case "ack":
        return this._onAck(msg.seq, msg.rev);
      case "op":
        return this._onRemote(msg);
      case "presence":
        return this._onPresence(msg);
      case "leave":
        if (this.peers.delete(msg.client_id)) {
          this._dispatch("leave", { clientId: msg.client_id });
          this._dispatch("peers", { peers: this.peers });
        }
        return;
      case "error":
        return this._onError(msg);
      case "auth":
        if (this._authPending > 0) this._authPending--;
        this._tokenRenewed = false;
        this._setRole(msg.role, msg.exp);
        this._scheduleRefresh();
        return;
      default:
        return;
    }
  }
  _onWelcome(msg) {
    if (msg.client_id && msg.client_id !== this.clientId) {
      this.clientId = msg.client_id;
    }
    this._welcomed = true;
    this._attempts = 0;
    this._retryDelay = 0;
    const wasReload = this._reload;
    this._reload = false;
    this._resyncWhenIdle = false;
    if (this._wsToken === this.token) this._tokenRenewed = false;
    const previousRole = this.role;
    const previousExp = this.exp;
    if (ROLES.has(msg.role)) this.role = msg.role;
    if (msg.exp !== void 0) this.exp = typeof msg.exp === "number" ? msg.exp : null;
    if (this.role !== previousRole || this.exp !== previousExp) {
      this._dispatch("auth", { role: this.role, exp: this.exp, previousRole });
    }
    if (Array.isArray(msg.ops)) {
      for (const entry of msg.ops) {
        if (entry.rev <= this.rev) continue;
        if (entry.rev !== this.rev + 1) throw new Error(`resume gap: have ${this.rev}, got ${entry.rev}`);
        if (this.inflight && entry.client_id === this.clientId && entry.seq === this.inflight.seq) {
          this._ackInflight(entry.rev, false);
        } else {
          this._applyRemote(entry.op, entry.rev, entry.client_id ?? null, entry.seq ?? null, false);
        }
      }
      if (typeof msg.rev === "number" && msg.rev !== this.rev) {
        throw new Error(`resume ended at ${this.rev}, server is at ${msg.rev}`);
      }
    } else {
      const content = typeof msg.content === "string" ? msg.content : "";
      if (this.content === null) {
        this.content = content;
        this.rev = msg.rev;
        this._dispatch("ready", { content, rev: msg.rev });
      } else {
        if (this.pending > 0 || wasReload) {
          const lost = this.pending;
          this.inflight = null;
          this.buffer = null;
          this.bufferEdits = 0;
          if (lost > 0 && !wasReload) this._emitError("lost_edits", `${lost} unsynced edits were dropped`);
        }
        const op = diffOp(this.content, content);
        this.content = content;
        this.rev = msg.rev;
        if (op.length) {
          this._transformPeersRemote(op);
          this._dispatch("remoteop", { op, rev: msg.rev, clientId: null, seq: null, reset: true });
        }
      }
    }
    this.peers = /* @__PURE__ */ new Map();
    for (const p of msg.peers || []) {
      if (p.client_id === this.clientId) continue;
      this.peers.set(p.client_id, { selection: this._peerSelection(p.selection), user: p.user || null });
    }
    this._dispatch("peers", { peers: this.peers });
    this._setStatus("connected");
    this._scheduleRefresh();
    if (this._wsToken !== this.token && this.token) {
      if (this._send({ type: "auth", token: this.token })) this._authPending++;
    }
    if (this.readOnly && this.pending > 0) {
      const lost = this.pending;
      this.inflight = null;
      this.buffer = null;
      this.bufferEdits = 0;
      this._emitError("read_only", `${lost} unsynced edits were dropped`);
      this._reload = true;
      this._reconnectSoon();
      return;
    }
    if (this.inflight) {
      this._send({ type: "op", rev: this.rev, seq: this.inflight.seq, op: this.inflight.op });
    } else {
      this._flush();
    }
    if (this._presence) this._presenceDirty = true;
    this._sendPresence();
    this._emitStatus();
  }
  _onAck(seq, rev) {
    if (!this.inflight || seq !== this.inflight.seq) return;
    this._ackInflight(rev, true);
  }
  _ackInflight(rev, flush) {
    const seq = this.inflight.seq;
    this.inflight = null;
    this.rev = rev;
    this._dispatch("ack", { seq, rev });
    if (this._resyncWhenIdle) {
      this._resyncWhenIdle = false;
      this._reload = true;
      this._reconnectSoon();
      this._emitStatus();
      return;
    }
    if (flush) this._flush();
    this._sendPresence();
    this._emitStatus();
  }
  _onRemote(msg) {
    if (typeof msg.rev !== "number" || !isOp(msg.op)) return;
    if (msg.rev <= this.rev) return;
    if (msg.rev !== this.rev + 1) throw new Error(`missing ops: have ${this.rev}, got ${msg.rev}`);
    if (this.inflight && msg.client_id === this.clientId && msg.seq === this.inflight.seq) {
      this._ackInflight(msg.rev, true);
      return;
    }
    this._applyRemote(msg.op, msg.rev, msg.client_id ?? null, msg.seq ?? null, true);
  }
  _applyRemote(op, rev, clientId, seq, live) {
    if (this.inflight) {
      const mine = this.inflight.op;
      this.inflight.op = import_ot_text_unicode.type.transform(mine, op, "left");
      op = import_ot_text_unicode.type.transform(op, mine, "right");
    }
    if (this.buffer) {
      const mine = this.buffer;
      this.buffer = import_ot_text_unicode.type.transform(mine, op, "left");
      op = import_ot_text_unicode.type.transform(op, mine, "right");
    }
    this.content = import_ot_text_unicode.type.apply(this.content, op);
    this.rev = rev;
    this._transformPeersRemote(op);
    this._dispatch("remoteop", { op, rev, clientId, seq, reset: false, live });
  }
  _onPresence(msg) {
    if (!msg.client_id || msg.client_id === this.clientId) return;
    const prev = this.peers.get(msg.client_id);
    const entry = { selection: this._peerSelection(msg.selection), user: msg.user || prev && prev.user || null };
    this.peers.set(msg.client_id, entry);
    this._dispatch("presence", { clientId: msg.client_id, selection: entry.selection, user: entry.user });
    this._dispatch("peers", { peers: this.peers });
  }
  _onError(msg) {
    const code = msg.code || "error";
    const ours = this.inflight && msg.seq != null && msg.seq === this.inflight.seq;
    const refusedRefresh = code === "forbidden" && msg.seq == null && this._authPending > 0;
    if (code === "forbidden" && this._welcomed && !refusedRefresh) {
      if (ours) {
        const lost = this.pending;
        this.inflight = null;
        this.buffer = null;
        this.bufferEdits = 0;
        this._resyncWhenIdle = false;
        this._emitError(code, msg.message, msg.seq, false, describeError("read_only"));
        this._setRole("read");
        if (lost > 0) {
          this._reload = true;
          this._reconnectSoon();
        }
        this._emitStatus();
      } else if (msg.seq == null) {
        this._presenceDirty = false;
        this._setRole("read");
      }
      return;
    }
    if (code === "rate_limited" && msg.seq == null && this._authPending > 0) {
      this._authPending--;
      clearTimeout(this._authRetryTimer);
      this._authRetryTimer = setTimeout(() => {
        if (this.token && this._send({ type: "auth", token: this.token })) this._authPending++;
      }, 1e3);
      return;
    }
    if (code === "forbidden" && !this._welcomed && !this._fixedClientId && !this._reidentified && /client_id|another user/i.test(msg.message || "")) {
      this._reidentified = true;
      this._newIdentity();
      this._reconnectSoon();
      return;
    }
    const fatal = FATAL_CODES.has(code) || code === "forbidden";
    this._emitError(code, msg.message, msg.seq, fatal);
    if (fatal) {
      this._stopFor(code === "unauthorized" || code === "forbidden" ? code : "closed");
      return;
    }
    if (!ours) return;
    if (code === "rate_limited" || code === "unavailable") {
      this._retryDelay = Math.min(5e3, this._retryDelay ? this._retryDelay * 2 : 250);
      clearTimeout(this._retryTimer);
      this._retryTimer = setTimeout(() => {
        if (this.inflight) this._send({ type: "op", rev: this.rev, seq: this.inflight.seq, op: this.inflight.op });
      }, this._retryDelay);
    } else if (code === "rev_out_of_range") {
      this._reconnectSoon();
    } else {
      this.inflight = null;
      this.buffer = null;
      this.bufferEdits = 0;
      this._reload = true;
      this._reconnectSoon();
    }
  }
  // ---- sending ----------------------------------------------------------------
  _flush() {
    if (this.inflight || !this.buffer || !this._welcomed || !this._ws || this.readOnly) return;
    const op = this.buffer;
    const seq = this.nextSeq++;
    this.inflight = { seq, op, edits: this.bufferEdits };
    this.buffer = null;
    this.bufferEdits = 0;
    this._send({ type: "op", rev: this.rev, seq, op });
  }
  _sendPresence() {
    if (!this._presenceDirty || !this._presence) return;
    if (this.readOnly) return;
    if (this.buffer) return;
    const msg = { type: "presence", selection: this._presence.selection };
    if (this._presence.user) msg.user = this._presence.user;
    if (this._send(msg)) this._presenceDirty = false;
  }
  // ---- peers ---------------------------------------------------------------------
  /** A peer's selection arrives relative to the server content; map it onto ours. */
  _peerSelection(sel) {
    if (!Array.isArray(sel) || sel.length !== 2) return null;
    let s = [sel[0], sel[1]];
    if (this.inflight) s = import_ot_text_unicode.type.transformSelection(s, this.inflight.op);
    if (this.buffer) s = import_ot_text_unicode.type.transformSelection(s, this.buffer);
    return s;
  }
  _transformPeers(op) {
    for (const p of this.peers.values()) {
      if (p.selection) p.selection = import_ot_text_unicode.type.transformSelection(p.selection, op);
    }
  }
  _transformPeersRemote(op) {
    this._transformPeers(op);
  }
  // ---- persistence and events ------------------------------------------------
  _key() {
    return "collab:" + this.docId;
  }
  /** Takes this document's record out of storage (see the top of the file). */
  _claim() {
    if (!this.storage) return {};
    try {
      const raw = this.storage.getItem(this._key());
      this.storage.removeItem(this._key());
      return raw ? JSON.parse(raw) : {};
    } catch {
      return {};
    }
  }
  _save() {
    if (!this.storage) return;
    try {
      const record = { clientId: this.clientId, nextSeq: this.nextSeq };
      if (this._sub !== null) record.sub = this._sub;
      this.storage.setItem(this._key(), JSON.stringify(record));
    } catch {
    }
  }
  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emitStatus();
  }
  _emitStatus() {
    this._dispatch("status", { status: this.status, pending: this.pending });
  }
  _emitError(code, message, seq, fatal = false, text = null) {
    this._dispatch("error", {
      code,
      message: message || "",
      text: text || describeError(code, message),
      seq: seq ?? null,
      fatal,
      reason: code === "unauthorized" ? authReason(message) : null
    });
  }
  _dispatch(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
};
var export_textType = import_ot_text_unicode.type;
export {
  CollabClient,
  authReason,
  codePointLength,
  describeError,
  diffOp,
  refreshDelay,
  export_textType as textType,
  tokenSubject
};
