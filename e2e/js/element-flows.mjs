// Drives ozo-identity through matrix-js-sdk with the calls Element makes, against two Dendrite
// homeservers. Run by e2e/jssdk_test.go, which starts everything and passes it in E2E (JSON).
// Every request goes out from E2E.localAddress, outside the identity server's v1 networks, as a
// person's browser would. Each step prints one JSON line; any failure exits non-zero.
import http from "node:http";
import https from "node:https";
import { createClient, SERVICE_TYPES } from "matrix-js-sdk";

const env = JSON.parse(process.env.E2E);
const isURL = env.identityServer; // https://localhost:port
const idServer = new URL(isURL).host; // what clients pass as id_server

function step(name, detail = {}) {
    console.log(JSON.stringify({ step: name, ...detail }));
}

// fetchFn for the SDK: node's http(s) with a chosen source address (fetch has no such option).
// The test CA comes from NODE_EXTRA_CA_CERTS.
function fetchFrom(localAddress) {
    return (input, init = {}) =>
        new Promise((resolve, reject) => {
            const url = new URL(typeof input === "string" ? input : input.toString());
            const headers = {};
            new Headers(init.headers ?? {}).forEach((v, k) => (headers[k] = v));
            const mod = url.protocol === "https:" ? https : http;
            const req = mod.request(url, { method: init.method ?? "GET", headers, localAddress, signal: init.signal }, (res) => {
                const chunks = [];
                res.on("data", (c) => chunks.push(c));
                res.on("error", reject);
                res.on("end", () => {
                    const h = new Headers();
                    for (const [k, v] of Object.entries(res.headers)) {
                        for (const one of [].concat(v)) h.append(k, one);
                    }
                    const empty = [204, 304].includes(res.statusCode);
                    resolve(new Response(empty ? null : Buffer.concat(chunks), { status: res.statusCode, headers: h }));
                });
            });
            req.on("error", reject);
            if (init.body !== undefined && init.body !== null) req.write(typeof init.body === "string" ? init.body : Buffer.from(init.body));
            req.end();
        });
}
const fetchFn = fetchFrom(env.localAddress);

// A client as Element builds it: homeserver, identity server, and a way to get the IS token.
function client(user) {
    const c = createClient({
        baseUrl: user.homeserver,
        accessToken: user.accessToken,
        userId: user.userId,
        deviceId: user.deviceId,
        idBaseUrl: isURL,
        identityServer: { getAccessToken: async () => c.isToken ?? null },
        fetchFn,
    });
    return c;
}

async function expectError(what, promise) {
    try {
        await promise;
    } catch (e) {
        return { errcode: e.errcode ?? e.data?.errcode ?? "", status: e.httpStatus ?? 0 };
    }
    throw new Error(`${what} succeeded; it was expected to fail`);
}

async function mail(to, n) {
    const res = await fetch(`${env.mailbox}/mail?to=${encodeURIComponent(to)}&n=${n}`);
    if (!res.ok) throw new Error(`mailbox: ${res.status} ${await res.text()}`);
    return (await res.json()).text;
}

async function until(what, fn, ms = 30000) {
    const deadline = Date.now() + ms;
    for (;;) {
        const v = await fn();
        if (v) return v;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 250));
    }
}

const alice = client(env.alice); // hs1, the inviter
const bob = client(env.bob); // hs1, invited by email before binding it
const carol = client(env.carol); // hs2, bound by UZI number and idp subject

// 1. registerWithIdentityServer, as Element does when an identity server is set.
for (const [name, c] of [["alice", alice], ["bob", bob], ["carol", carol]]) {
    const openid = await c.getOpenIdToken();
    const res = await c.registerWithIdentityServer(openid);
    c.isToken = res.token ?? res.access_token;
    if (!c.isToken) throw new Error(`${name}: no identity server token in ${JSON.stringify(res)}`);
    const account = await c.getIdentityAccount(c.isToken);
    if (account.user_id !== c.getUserId()) throw new Error(`${name}: account is ${account.user_id}`);
}
step("registerWithIdentityServer");

// 2. Terms: refused before, accepted with agreeToTerms.
const before = await expectError("hash_details before accepting terms", alice.getIdentityHashDetails(alice.isToken));
if (before.errcode !== "M_TERMS_NOT_SIGNED") throw new Error(`before terms: ${JSON.stringify(before)}`);
const terms = await alice.getTerms(SERVICE_TYPES.IS, isURL);
const urls = Object.values(terms.policies).map((p) => (p.en ?? Object.values(p).find((d) => d.url)).url);
for (const c of [alice, bob, carol]) await c.agreeToTerms(SERVICE_TYPES.IS, isURL, c.isToken, urls);
step("terms", { policies: Object.keys(terms.policies), accepted: urls });

// 3. Alice invites Bob's (unbound) email: Dendrite stores it at the identity server, which mails Bob.
const room = (await alice.createRoom({ preset: "private_chat", name: "Zorgteam JS" })).room_id;
await alice.inviteByThreePid(room, "email", env.bobEmail);
const inviteMail = await mail(env.bobEmail, 1);
const signMatch = inviteMail.match(/signurl=([^&\s"]+)/);
if (!signMatch) throw new Error(`no signurl in the invite mail:\n${inviteMail}`);
const signURL = decodeURIComponent(signMatch[1]);
step("inviteByThreePid email", { room, signURL });

// 4. Bob shares his email for discovery: requestEmailToken (unchanged SDK: send_attempt "1").
const secret = "js" + Math.random().toString(36).slice(2) + Date.now();
const { sid } = await bob.requestEmailToken(env.bobEmail, secret, 1, undefined, bob.isToken);
const validation = await mail(env.bobEmail, 2);
const link = validation.match(/https:\/\/\S+\/validate\/email\/submitToken\?[^\s"<>]+/)?.[0];
if (!link) throw new Error(`no submitToken link in:\n${validation}`);
const page = await fetchFn(link.replaceAll("&amp;", "&"));
if (page.status !== 200) throw new Error(`submit from the mail: ${page.status}`);
step("requestEmailToken and submit", { sid });

// 5. Bind. Element asks the homeserver (bindThreePid, /account/3pid/bind), which Dendrite does not
// serve; the path that works is Dendrite's POST /account/3pid with bind: true.
const creds = { sid, client_secret: secret, id_server: idServer, id_access_token: bob.isToken };
// Element's "add an email to the account" asks the homeserver for the mail, without id_server.
const addRefused = await expectError("requestAdd3pidEmailToken on Dendrite",
    bob.requestAdd3pidEmailToken(env.bobEmail, secret + "add", 1));
const bindRefused = await expectError("bindThreePid on Dendrite", bob.bindThreePid(creds));
await bob.http.authedRequest("POST", "/account/3pid", undefined, { three_pid_creds: creds, bind: true });
step("bind", { requestAdd3pidEmailToken: addRefused, bindThreePid: bindRefused });

// 6. Hashed lookups: email, uzi, and an idp subject with capitals (the SDK lower-cases it).
const found = await alice.identityHashedLookup(
    [
        [env.bobEmail, "email"],
        [env.carolUZI, "uzi"],
        [env.carolIDP, "idp"],
    ],
    alice.isToken,
);
const byAddress = Object.fromEntries(found.map((m) => [m.address, m.mxid]));
const want = { [env.bobEmail]: bob.getUserId(), [env.carolUZI]: carol.getUserId(), [env.carolIDP]: carol.getUserId() };
for (const [a, m] of Object.entries(want)) {
    if (byAddress[a] !== m) throw new Error(`lookup of ${a}: ${byAddress[a]}, want ${m} (all: ${JSON.stringify(found)})`);
}
step("identityHashedLookup", { found: byAddress });

// 7. Bob joins from the mail's sign URL once the onbind made him an invite.
async function membership(c, roomId) {
    const sync = await c.http.authedRequest("GET", "/sync", { timeout: "0" });
    if (sync.rooms?.invite?.[roomId]) return "invite";
    if (sync.rooms?.join?.[roomId]) return "join";
    return "";
}
await until("bob's invite after the onbind", async () => (await membership(bob, room)) === "invite");
await bob.joinRoom(room, { inviteSignUrl: signURL });
await until("bob joined", async () => (await alice.getJoinedRoomMembers(room)).joined?.[bob.getUserId()]);
step("joinRoom with inviteSignUrl", { room });

// 8. Alice invites Carol, on the other Dendrite, by UZI number; Carol joins over federation.
await alice.inviteByThreePid(room, "uzi", env.carolUZI);
await until("carol's invite", async () => (await membership(carol, room)) === "invite");
await carol.joinRoom(room);
await until("carol joined", async () => (await alice.getJoinedRoomMembers(room)).joined?.[carol.getUserId()]);
step("inviteByThreePid uzi");

// 9. Unbind. Element asks the homeserver (unbindThreePid), which Dendrite refuses; the identity
// server unbinds with the validated session.
const unbindRefused = await expectError("unbindThreePid on Dendrite", bob.unbindThreePid("email", env.bobEmail));
await bob.http.idServerRequest("POST", "/3pid/unbind",
    { sid, client_secret: secret, mxid: bob.getUserId(), threepid: { medium: "email", address: env.bobEmail } },
    "/_matrix/identity/v2", bob.isToken);
const after = await alice.identityHashedLookup([[env.bobEmail, "email"]], alice.isToken);
if (after.length !== 0) throw new Error(`after unbind: ${JSON.stringify(after)}`);
step("unbind", { unbindThreePid: unbindRefused });

// 10. Log out of the identity server (the token stops working), then of the homeserver.
for (const c of [alice, bob, carol]) {
    await c.http.idServerRequest("POST", "/account/logout", undefined, "/_matrix/identity/v2", c.isToken);
    const gone = await expectError("account after logout", c.getIdentityAccount(c.isToken));
    if (gone.errcode !== "M_UNAUTHORIZED" || gone.status !== 401) throw new Error(`after logout: ${JSON.stringify(gone)}`);
    await c.logout();
}
step("logout");
step("done");
