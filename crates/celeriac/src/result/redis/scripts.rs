//! The Lua scripts that make each store operation atomic on the server.
//!
//! They implement the protocol Celery 5.7's Redis backend follows (§4.5,
//! and `celery/backends/redis.py` of the pinned version), so Python and
//! Rust workers can store results for, and join, the same chords:
//!
//! - a result is written with its expiry and published on its key's
//!   channel in one step, unless a `SUCCESS` is already stored;
//! - a chord header result is recorded once per `<task id>:<group index>`
//!   (`.d`), in the sorted set `.j` scored by its index; when `.j` holds
//!   `.s` + `.t` entries, the first worker to `SET .c <token> NX EX` applies
//!   the body; `.c` then reads `done`, and late copies change nothing.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: the result key. ARGV: the document, its expiry in seconds (0:
/// none). Returns 1 if stored, 0 if a `SUCCESS` was already there, in
/// JSON or signed (Celery's `auth` serializer, either envelope layout).
pub(crate) static STORE_RESULT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local success = '{"status": "SUCCESS",'
-- A value signed by Celery's auth serializer is base64 text whose
-- decoded form ends in the JSON document, after the separator \0\1.
local function signed_success(text)
    local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
    -- The document's status sits within the first kilobyte or so (after
    -- the signer, the signature and two MIME names): decode no further.
    local bytes, bits, count = {}, 0, 0
    for i = 1, math.min(#text, 4096) do
        local at = string.find(alphabet, string.sub(text, i, i), 1, true)
        if at then
            bits = bits * 64 + (at - 1)
            count = count + 6
            if count >= 8 then
                count = count - 8
                local byte = math.floor(bits / 2 ^ count)
                bits = bits - byte * 2 ^ count
                bytes[#bytes + 1] = string.char(byte)
            end
        end
    end
    return string.find(table.concat(bytes), '\0\1' .. success, 1, true) ~= nil
end
local current = redis.call('GET', KEYS[1])
if current then
    local decoded, document = pcall(cjson.decode, current)
    local succeeded
    if decoded and type(document) == 'table' then
        succeeded = document['status'] == 'SUCCESS'
    elseif string.sub(current, 1, 1) == '{' then
        succeeded = string.sub(current, 1, 21) == success
    else
        succeeded = signed_success(current)
    end
    if succeeded then
        return 0
    end
end
local expires = tonumber(ARGV[2])
if expires > 0 then
    redis.call('SETEX', KEYS[1], expires, ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// KEYS: `.j`, `.t`, `.s`, `.d`, `.c`, the saved group. ARGV: task id,
/// encoded part, group index (or `+inf`), chord expiry (0: none), saved
/// group expiry (0: leave), claim lease in seconds, claim token.
/// Returns `[count, size + adjustment (or -1 while unknown), claimed]`, or
/// `[-1, 0, 0]` once the chord is done.
pub(crate) static CHORD_PART: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[5]) == 'done' then
    return {-1, 0, 0}
end
if redis.call('SADD', KEYS[4], ARGV[1] .. ':' .. ARGV[3]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
end
local count = redis.call('ZCARD', KEYS[1])
local expires = tonumber(ARGV[4])
if expires > 0 then
    for i = 1, 4 do
        redis.call('EXPIRE', KEYS[i], expires)
    end
    local group_expires = tonumber(ARGV[5])
    if group_expires > 0 then
        redis.call('EXPIRE', KEYS[6], group_expires)
    end
end
local size = redis.call('GET', KEYS[3])
if not size then
    return {count, -1, 0}
end
local total = tonumber(size) + tonumber(redis.call('GET', KEYS[2]) or '0')
local claimed = 0
if count == total and redis.call('SET', KEYS[5], ARGV[7], 'NX', 'EX', tonumber(ARGV[6])) then
    claimed = 1
end
return {count, total, claimed}
"#,
    )
});

/// KEYS: `.c`, `.s`. ARGV: claim token, lease in seconds. Extends our
/// claim, or takes an expired one while the chord is unfinished. Returns 1
/// if we hold the claim.
pub(crate) static EXTEND_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    return redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
if not holder and redis.call('EXISTS', KEYS[2]) == 1 then
    if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then
        return 1
    end
end
return 0
"#,
    )
});

/// KEYS: `.c`, `.j`, `.t`, `.s`, `.d`. ARGV: claim token, how long `done`
/// stays. Removes the chord's bookkeeping if we hold the claim. Returns 1
/// if it did.
pub(crate) static FINISH_CHORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local keep = tonumber(ARGV[2])
if keep > 0 then
    redis.call('SET', KEYS[1], 'done', 'EX', keep)
end
return 1
"#,
    )
});

/// KEYS: a unique task's lock. ARGV: the task id, the lock's time to live
/// in milliseconds. Returns nil if the lock was taken for the task, else
/// the id of the task holding it.
pub(crate) static CLAIM_UNIQUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return nil
end
return redis.call('GET', KEYS[1])
"#,
    )
});

/// KEYS: a unique task's lock. ARGV: the task id. Deletes the lock if that
/// task holds it; returns 1 if it did.
pub(crate) static RELEASE_UNIQUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// The store's clock in milliseconds, for the lease scripts below (Redis 5+
/// replicates scripts by their effects, so `TIME` is allowed).
const NOW_MS: &str =
    "local time = redis.call('TIME')\nlocal now = time[1] * 1000 + math.floor(time[2] / 1000)\n";

/// KEYS: a global limit's leases (a sorted set of holders scored by
/// expiry). ARGV: holder, cap, time to live in milliseconds. Drops expired
/// leases, then takes one if fewer than `cap` are held (or renews the
/// holder's own). Returns 1 if the holder has a lease, else 0.
pub(crate) static ACQUIRE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{}",
        r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
    if redis.call('PTTL', KEYS[1]) < ttl then
        redis.call('PEXPIRE', KEYS[1], ttl)
    end
    return 1
end
return 0
"#
    ))
});

/// KEYS: a global limit's leases. ARGV: holder, time to live in
/// milliseconds. Extends the holder's lease if it has not expired; returns
/// 1 if it did, else 0.
pub(crate) static RENEW_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{}",
        r#"
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires or tonumber(expires) <= now then
    return 0
end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"#
    ))
});

/// KEYS: a global limit's leases. Returns how many are held now.
pub(crate) static HELD_LEASES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{}",
        r#"
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"#
    ))
});

/// The store's clock in microseconds.
const NOW_US: &str = "local time = redis.call('TIME')\nlocal now = time[1] * 1000000 + time[2]\n";

/// KEYS: a global rate limit's schedule (the next free moment, in
/// microseconds). ARGV: interval, near, lead, horizon (microseconds).
/// Returns `{slot, now}`, or `{-1, now}` beyond the horizon.
pub(crate) static TAKE_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_US}{}",
        r#"
local interval, near, lead, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then
    slot = now
end
if slot > now and slot - now >= near and slot < now + lead then
    slot = now + lead
end
if slot - now > horizon then
    return {-1, now}
end
redis.call('SET', KEYS[1], slot + interval, 'PX', math.ceil((slot + interval - now) / 1000) + 1000)
return {slot, now}
"#
    ))
});

/// KEYS: a global rate limit's schedule. ARGV: a slot given earlier, the
/// interval (microseconds). Keeps the schedule behind the slot; returns the
/// store's clock.
pub(crate) static HONOUR_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_US}{}",
        r#"
local next = tonumber(ARGV[1]) + tonumber(ARGV[2])
if next > tonumber(redis.call('GET', KEYS[1]) or '0') then
    redis.call('SET', KEYS[1], next, 'PX', math.max(math.ceil((next - now) / 1000), 0) + 1000)
end
return now
"#
    ))
});
