/* Unit test for src/lua_budget.c's capped allocator: exact accounting of what the state
 * holds through moves between size classes, the cap refusing growth even when a cached
 * block would serve it, contents kept across moves, the cache's bound, the large blocks kept
 * for reuse, and every cached block given back once the state has freed all (lua_close). */
#include <lauxlib.h>
#include <lualib.h>

#include "check.h"
#include "hr/common.h"
#include "hr/lua_budget.h"

static void *al(hr_lua_cap_t *cap, void *p, size_t osize, size_t nsize)
{
    return hr_lua_capped_alloc(cap, p, osize, nsize);
}

/* Fill n bytes of p with a pattern from seed; check it. */
static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed + i * 7);
}

static int intact(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 7)) return 0;
    return 1;
}

static void test_accounting_and_moves(void)
{
    hr_lua_cap_t cap = {.limit = 1 << 20};
    unsigned char *keep = al(&cap, NULL, 0, 100); /* keeps used above 0 throughout */
    CHECK_INT_EQ(cap.used, 100);
    /* Every kind of move, from small and large, keeps the bytes both sizes have. */
    static const size_t sizes[][2] = {{20, 30},   {20, 40},   {40, 20},     {200, 1000},
                                      {1000, 17}, {17, 5000}, {5000, 1024}, {1024, 1025},
                                      {1025, 1},  {48, 48},   {5000, 9000}, {9000, 300},
                                      {300, 47},  {1, 1024},  {640, 641},   {641, 16}};
    for (size_t i = 0; i < HR_ARRAY_SIZE(sizes); i++) {
        size_t a = sizes[i][0], b = sizes[i][1];
        unsigned char *p = al(&cap, NULL, 0, a);
        CHECK(p != NULL);
        CHECK_INT_EQ(cap.used, 100 + a);
        fill(p, a, (unsigned)i);
        p = al(&cap, p, a, b);
        CHECK(p != NULL);
        CHECK_INT_EQ(cap.used, 100 + b);
        CHECK(intact(p, a < b ? a : b, (unsigned)i));
        fill(p, b, (unsigned)i + 1); /* the whole new size is writable (ASan/valgrind) */
        CHECK(al(&cap, p, b, 0) == NULL);
        CHECK_INT_EQ(cap.used, 100);
    }
    /* A freed small block waits in the cache, not in used, and serves its class again. */
    void *p = al(&cap, NULL, 0, 40);
    CHECK_INT_EQ(cap.used, 140);
    size_t before = cap.cached;
    al(&cap, p, 40, 0);
    CHECK_INT_EQ(cap.used, 100);
    CHECK_INT_EQ(cap.cached, HR_LUA_CACHE_ON ? before + 48 : 0);
    void *q = al(&cap, NULL, 0, 33); /* same class (33..48 bytes) */
    if (HR_LUA_CACHE_ON) CHECK(q == p);
    CHECK_INT_EQ(cap.cached, before);
    CHECK_INT_EQ(cap.used, 133);
    al(&cap, q, 33, 0);
    /* Freeing the last block the state holds empties the cache. */
    al(&cap, keep, 100, 0);
    CHECK_INT_EQ(cap.used, 0);
    CHECK_INT_EQ(cap.cached, 0);
    for (size_t c = 0; c < HR_ARRAY_SIZE(cap.free); c++)
        CHECK(cap.free[c] == NULL);
}

static void test_cache_bound(void)
{
    enum { N = 2 * HR_LUA_CACHE_BYTES / HR_LUA_CACHE_MAX };
    hr_lua_cap_t cap = {.limit = SIZE_MAX};
    void *keep = al(&cap, NULL, 0, 8);
    void *blocks[N];
    for (size_t i = 0; i < N; i++)
        blocks[i] = al(&cap, NULL, 0, HR_LUA_CACHE_MAX);
    for (size_t i = 0; i < N; i++)
        al(&cap, blocks[i], HR_LUA_CACHE_MAX, 0);
    CHECK_INT_EQ(cap.used, 8);
    CHECK(cap.cached <= HR_LUA_CACHE_BYTES);
    CHECK_INT_EQ(cap.cached, HR_LUA_CACHE_ON ? HR_LUA_CACHE_BYTES : 0);
    al(&cap, keep, 8, 0);
    CHECK_INT_EQ(cap.cached, 0);
}

static size_t big_kept(const hr_lua_cap_t *cap)
{
    size_t n = 0;
    for (size_t i = 0; i < HR_LUA_BIG_SLOTS; i++)
        n += cap->big[i] != NULL;
    return n;
}

/* A freed large block waits in a slot and serves the next allocation it holds that is at
 * least half its size; no more than the slots are kept, none above HR_LUA_BIG_MAX, the cap
 * still refuses what a kept block would serve, and all go once the state has freed all. */
static void test_big_blocks(void)
{
    hr_lua_cap_t cap = {.limit = SIZE_MAX};
    void *keep = al(&cap, NULL, 0, 8);
    unsigned char *p = al(&cap, NULL, 0, 4000);
    fill(p, 4000, 1);
    al(&cap, p, 4000, 0);
    CHECK_INT_EQ(cap.used, 8);
    CHECK_INT_EQ(big_kept(&cap), HR_LUA_CACHE_ON ? 1 : 0);
    unsigned char *q = al(&cap, NULL, 0, 3000);
    if (HR_LUA_CACHE_ON) CHECK(q == p);
    CHECK_INT_EQ(cap.used, 3008);
    CHECK_INT_EQ(big_kept(&cap), 0);
    fill(q, 3000, 2);
    al(&cap, q, 3000, 0); /* kept as 3000 bytes now */
    unsigned char *small = al(&cap, NULL, 0, 1400), *large = al(&cap, NULL, 0, 3500);
    CHECK(small != q && large != q); /* under half of it; more than it holds */
    fill(small, 1400, 3);
    fill(large, 3500, 4);
    CHECK_INT_EQ(cap.used, 8 + 1400 + 3500);
    al(&cap, small, 1400, 0);
    al(&cap, large, 3500, 0);
    /* The cap refuses an allocation a kept block would serve. */
    cap.on = true;
    cap.limit = cap.used + 1000;
    CHECK(al(&cap, NULL, 0, 3000) == NULL);
    CHECK(cap.denied);
    cap.on = false;
    cap.denied = false;
    /* At most the slots, and nothing above HR_LUA_BIG_MAX. */
    void *blocks[HR_LUA_BIG_SLOTS + 2];
    for (size_t i = 0; i < HR_ARRAY_SIZE(blocks); i++)
        blocks[i] = al(&cap, NULL, 0, 2048);
    for (size_t i = 0; i < HR_ARRAY_SIZE(blocks); i++)
        al(&cap, blocks[i], 2048, 0);
    CHECK_INT_EQ(big_kept(&cap), HR_LUA_CACHE_ON ? HR_LUA_BIG_SLOTS : 0);
    void *huge = al(&cap, NULL, 0, HR_LUA_BIG_MAX + 1);
    CHECK(huge != NULL);
    al(&cap, huge, HR_LUA_BIG_MAX + 1, 0);
    CHECK_INT_EQ(cap.used, 8);
    al(&cap, keep, 8, 0);
    CHECK_INT_EQ(big_kept(&cap), 0);
}

/* The cap applies to growth a cached block or the block's own class could serve. */
static void test_cap_refuses_with_cache(void)
{
    hr_lua_cap_t cap = {.limit = 1000, .on = true};
    void *keep = al(&cap, NULL, 0, 900);
    void *p = al(&cap, NULL, 0, 64);
    CHECK(p != NULL);
    al(&cap, p, 64, 0); /* cached (class 49..64) */
    CHECK(al(&cap, NULL, 0, 120) == NULL);
    CHECK(cap.denied);
    cap.denied = false;
    cap.extra = 60; /* 900 + 60 held: a cached 64 would pass 1000 */
    CHECK(al(&cap, NULL, 0, 64) == NULL);
    CHECK(cap.denied);
    CHECK_INT_EQ(cap.used, 900);
    cap.denied = false;
    cap.extra = 0;
    p = al(&cap, NULL, 0, 50);
    CHECK(p != NULL);
    CHECK_INT_EQ(cap.used, 950);
    cap.extra = 45;                     /* 950 + 45 held */
    CHECK(al(&cap, p, 50, 60) == NULL); /* 1005: refused, though the block has room */
    CHECK(cap.denied);
    CHECK_INT_EQ(cap.used, 950);
    cap.on = false; /* off: the state grows freely */
    void *r = al(&cap, p, 50, 60);
    CHECK(r != NULL);
    if (HR_LUA_CACHE_ON) CHECK(r == p); /* in place: its block holds 49..64 bytes */
    CHECK_INT_EQ(cap.used, 960);
    al(&cap, r, 60, 0);
    al(&cap, keep, 900, 0);
    CHECK_INT_EQ(cap.used, 0);
    CHECK_INT_EQ(cap.cached, 0);
}

/* A real state: what Lua counts is what the cap counts, and lua_close leaves nothing. */
static void test_lua_state(void)
{
    hr_lua_cap_t cap = {.limit = SIZE_MAX};
    lua_State *L = lua_newstate(hr_lua_capped_alloc, &cap);
    CHECK(L != NULL);
    luaL_openlibs(L);
    lua_gc(L, LUA_GCGEN, 0, 0);
    CHECK_INT_EQ(luaL_dostring(L, "local t = {}\n"
                                  "for i = 1, 20000 do\n"
                                  "  t[i % 300] = {tostring(i), i, {x = i .. 'y'}}\n"
                                  "end\n"
                                  "keep = t"),
                 LUA_OK);
    size_t lua_count =
        (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    CHECK_INT_EQ(cap.used, lua_count);
    CHECK(cap.cached <= HR_LUA_CACHE_BYTES);
    if (HR_LUA_CACHE_ON) CHECK(cap.cached > 0);
    lua_close(L);
    CHECK_INT_EQ(cap.used, 0);
    CHECK_INT_EQ(cap.cached, 0);
}

int main(void)
{
    test_accounting_and_moves();
    test_cache_bound();
    test_big_blocks();
    test_cap_refuses_with_cache();
    test_lua_state();
    return CHECK_DONE("test_lua_budget");
}
