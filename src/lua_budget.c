/* Lua calls under budget: protected calls with a traceback, an instruction budget for
 * top-level code, a memory cap for a state. */
#include "hr/lua_budget.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/common.h"

#define BUDGET_STEP 1000 /* instructions between two count-hook calls */

/* Registry key (only its address matters) of the running budgeted call's state. */
static const char budget_key = 'b';

/* One hr_lua_pcall_budget call in progress (on the C stack, reached through the registry). */
typedef struct {
    uint64_t limit;    /* instructions allowed */
    uint64_t executed; /* instructions so far, in BUDGET_STEP units until tripped */
    bool tripped;      /* the budget ran out: the hook now fires on every instruction */
    const char *what;  /* "top-level code" */
    const char *key;   /* the config key that sets the limit */
} budget_t;

static void budget_hook(lua_State *L, lua_Debug *ar);

/* The running budgeted call's state, or NULL outside one. [-0, +0, -] */
static budget_t *current(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_key);
    budget_t *b = lua_touserdata(L, -1);
    lua_pop(L, 1); /* drop the light userdata */
    return b;
}

/* Add n instructions to b; past its limit, make the hook fire on every instruction (so a
 * pcall in the chunk cannot swallow the error) and raise, prefixed with where (may be "").
 * [-0, +0, v] */
static void spend(lua_State *L, budget_t *b, uint64_t n, const char *where)
{
    b->executed += n;
    if (b->executed <= b->limit) return;
    if (!b->tripped) {
        b->tripped = true;
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    }
    luaL_error(L, "%s%s exceeded its instruction budget (%s = %I)", where, b->what, b->key,
               (lua_Integer)b->limit);
}

/* Count hook of a budgeted call. [-0, +0, v] */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    budget_t *b = current(L);
    if (!b) return;
    char where[LUA_IDSIZE + 24] = "";
    if (b->executed + (b->tripped ? 1 : BUDGET_STEP) > b->limit) {
        lua_getinfo(L, "Sl", ar); /* the running function: luaL_where would see its caller */
        if (ar->currentline > 0)
            snprintf(where, sizeof where, "%s:%d: ", ar->short_src, ar->currentline);
    }
    spend(L, b, b->tripped ? 1 : BUDGET_STEP, where);
}

void hr_lua_budget_charge(lua_State *L, uint64_t n)
{
    budget_t *b = current(L);
    if (b) spend(L, b, n, "");
}

/* L's memory cap if its allocator is hr_lua_capped_alloc, else NULL. [-0, +0, -] */
static hr_lua_cap_t *cap_of(lua_State *L)
{
    void *ud;
    return lua_getallocf(L, &ud) == hr_lua_capped_alloc ? ud : NULL;
}

/* The traceback of of from level on, built on L with L's memory cap off (what the router
 * spends to report an error is not the failed code's), as a malloc'd string; NULL if L has
 * no stack room left. [-0, +0, m] */
static char *traceback(lua_State *L, lua_State *of, int level)
{
    if (!lua_checkstack(L, LUA_MINSTACK)) return NULL;
    hr_lua_cap_t *cap = cap_of(L);
    bool on = cap && cap->on;
    if (cap) cap->on = false;
    luaL_traceback(L, of, NULL, level);
    char *s = hr_xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1); /* drop the traceback */
    if (cap) cap->on = on;
    return s;
}

/* Message handler of hr_lua_pcall: keeps the error value and, when upvalue 1 (a light
 * userdata char **) is there and not NULL, stores through it the traceback from the raising
 * function on (replacing one an earlier error left, as when a __close handler raises while
 * the stack unwinds). [-0, +1, m] */
static int traceback_handler(lua_State *L)
{
    char **trace = lua_touserdata(L, lua_upvalueindex(1));
    if (trace) {
        free(*trace);
        *trace = traceback(L, L, 1);
    }
    lua_settop(L, 1);
    return 1;
}

int hr_lua_pcall(lua_State *L, int nargs, int nres, char **trace)
{
    /* Without trace the handler would hand the error back as it is: call without it (the
     * JSON decode's per-event call, which has no use for a traceback). */
    if (!trace) return lua_pcall(L, nargs, nres, 0);
    *trace = NULL;
    int fn = lua_gettop(L) - nargs;
    /* The handler's closure is the router's memory, not the called code's: allocated with
     * the cap off, so a call made at the cap's edge still runs (and fails inside). */
    hr_lua_cap_t *cap = cap_of(L);
    bool on = cap && cap->on;
    if (cap) cap->on = false;
    bool handler = lua_checkstack(L, 2);
    if (handler) {
        lua_pushlightuserdata(L, trace);
        lua_pushcclosure(L, traceback_handler, 1);
    }
    if (handler) lua_insert(L, fn);
    if (cap) cap->on = on;
    int rc = lua_pcall(L, nargs, nres, handler ? fn : 0);
    if (handler) lua_remove(L, fn);
    return rc;
}

char *hr_lua_thread_trace(lua_State *L, lua_State *co)
{
    return traceback(L, co, 0);
}

int hr_lua_pcall_budget(lua_State *L, int nargs, int nres, uint64_t instructions, const char *what,
                        const char *key, char **trace)
{
    budget_t b = {.limit = instructions, .what = what, .key = key};
    lua_Hook old_hook = lua_gethook(L);
    int old_mask = lua_gethookmask(L), old_count = lua_gethookcount(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &budget_key); /* an enclosing call's, kept for after */
    void *outer = lua_touserdata(L, -1);
    lua_pop(L, 1);
    lua_pushlightuserdata(L, &b);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &budget_key);
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, BUDGET_STEP);
    int rc = hr_lua_pcall(L, nargs, nres, trace);
    lua_sethook(L, old_hook, old_mask, old_count);
    if (outer)
        lua_pushlightuserdata(L, outer);
    else
        lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &budget_key);
    return rc;
}

/* The size class of a block of n bytes (0 < n <= HR_LUA_CACHE_MAX). */
static inline size_t class_of(size_t n)
{
    return (n - 1) / HR_LUA_CACHE_STEP;
}

/* The first cached block of class c, taken off its free list, or NULL. */
static inline void *cache_pop(hr_lua_cap_t *cap, size_t c)
{
    void *p = cap->free[c];
    if (p) {
        memcpy(&cap->free[c], p, sizeof p);
        cap->cached -= (c + 1) * HR_LUA_CACHE_STEP;
    }
    return p;
}

/* Put p, a block of class c, on its free list if the cache has room; false if it has not. */
static inline bool cache_push(hr_lua_cap_t *cap, void *p, size_t c)
{
    size_t size = (c + 1) * HR_LUA_CACHE_STEP;
    if (cap->cached + size > HR_LUA_CACHE_BYTES) return false;
    memcpy(p, &cap->free[c], sizeof p);
    cap->free[c] = p;
    cap->cached += size;
    return true;
}

/* A block for n bytes: a cached one of its class, else malloc'd at its class's full size (so
 * any block of a class can serve any size of it). */
static void *block_get(hr_lua_cap_t *cap, size_t n)
{
    size_t c = class_of(n);
    void *p = cache_pop(cap, c);
    return p ? p : malloc((c + 1) * HR_LUA_CACHE_STEP);
}

/* Give back p, a block the state held as n bytes: to its class's free list while the cache
 * has room, else to malloc. */
static void block_put(hr_lua_cap_t *cap, void *p, size_t n)
{
    if (!cache_push(cap, p, class_of(n))) free(p);
}

/* A kept large block that holds n bytes and is no more than twice that, taken; or NULL. */
static void *big_get(hr_lua_cap_t *cap, size_t n)
{
    for (size_t i = 0; i < HR_LUA_BIG_SLOTS; i++) {
        void *p = cap->big[i];
        if (p && cap->big_size[i] >= n && cap->big_size[i] / 2 <= n) {
            cap->big[i] = NULL;
            return p;
        }
    }
    return NULL;
}

/* Keep p, a large block the state held as n bytes, in an empty slot; false if none is. */
static bool big_put(hr_lua_cap_t *cap, void *p, size_t n)
{
    for (size_t i = 0; i < HR_LUA_BIG_SLOTS; i++) {
        if (!cap->big[i]) {
            cap->big[i] = p;
            cap->big_size[i] = n;
            return true;
        }
    }
    return false;
}

/* Free every cached block (the state is gone). */
static void cache_empty(hr_lua_cap_t *cap)
{
    for (size_t c = 0; c < HR_ARRAY_SIZE(cap->free); c++)
        for (void *p; (p = cache_pop(cap, c));)
            free(p);
    for (size_t i = 0; i < HR_LUA_BIG_SLOTS; i++) {
        free(cap->big[i]);
        cap->big[i] = NULL;
    }
}

/* hr_lua_capped_alloc for every case but the two its inline part serves. */
static __attribute__((noinline)) void *capped_alloc(hr_lua_cap_t *cap, void *ptr, size_t osize,
                                                    size_t nsize)
{
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        if (!ptr) return NULL;
        if (HR_LUA_CACHE_ON && old <= HR_LUA_CACHE_MAX)
            block_put(cap, ptr, old);
        else if (!HR_LUA_CACHE_ON || old > HR_LUA_BIG_MAX || !big_put(cap, ptr, old))
            free(ptr);
        cap->used -= old;
        if (cap->used == 0) cache_empty(cap); /* lua_close freed the last block */
        return NULL;
    }
    if (cap->on && nsize > old && cap->used - old + nsize + cap->extra > cap->limit) {
        cap->denied = true;
        return NULL;
    }
    void *p;
    if (!HR_LUA_CACHE_ON || nsize > HR_LUA_CACHE_MAX) {
        p = !ptr && HR_LUA_CACHE_ON && nsize <= HR_LUA_BIG_MAX ? big_get(cap, nsize) : NULL;
        if (!p) p = realloc(ptr, nsize); /* a small block is malloc'd too */
        if (!p) return NULL;
    } else if (ptr && old <= HR_LUA_CACHE_MAX &&
               (nsize <= old || class_of(nsize) == class_of(old))) {
        p = ptr; /* it has room: a block of a class holds the whole class (Lua assumes a
                    shrink cannot fail) */
    } else {
        p = block_get(cap, nsize);
        if (!p) {
            if (ptr && nsize < old) { /* a large block shrinking: keep it */
                p = ptr;
            } else {
                return NULL;
            }
        } else if (ptr) {
            memcpy(p, ptr, old < nsize ? old : nsize);
            if (old <= HR_LUA_CACHE_MAX)
                block_put(cap, ptr, old);
            else
                free(ptr);
        }
    }
    cap->used = cap->used - old + nsize;
    return p;
}

void *hr_lua_capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    hr_lua_cap_t *cap = ud;
    /* The common cases first, without a call: a new small block from the cache (within the
     * cap), and a small block freed into the cache while it has room and the state holds
     * more than that block (the last one freed empties the cache). */
    if (HR_LUA_CACHE_ON && nsize <= HR_LUA_CACHE_MAX) {
        if (!ptr && nsize) {
            size_t c = class_of(nsize);
            if (cap->free[c] && (!cap->on || cap->used + nsize + cap->extra <= cap->limit)) {
                cap->used += nsize;
                return cache_pop(cap, c);
            }
        } else if (ptr && !nsize && osize <= HR_LUA_CACHE_MAX && cap->used > osize) {
            if (cache_push(cap, ptr, class_of(osize))) {
                cap->used -= osize;
                return NULL;
            }
        }
    }
    return capped_alloc(cap, ptr, osize, nsize);
}
