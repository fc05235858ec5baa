/* Lua calls under budget: every protected call the router makes (hr_lua_pcall, with a
 * traceback), an instruction budget for top-level code, and a memory cap for a state
 * (src/lua_budget.c).
 *
 * Top-level code is Lua like any other: a `while true do end` at the top of a rule file
 * would hang a reload, `hookrouter check` and the loop that runs them. So every chunk the
 * router runs outside an event goes through hr_lua_pcall_budget, which stops it with an
 * error after a fixed number of VM instructions, the same way an event's own budget does
 * (a count hook that keeps firing once tripped, so a pcall inside cannot swallow it).
 *
 * A failed call's message stays what Lua made it (the first line operators and tests know);
 * the stack traceback is handed back beside it, for the caller to add where a person reads
 * it (after a newline, so one-line logs escape it and first-line greps still match). */
#ifndef HR_LUA_BUDGET_H
#define HR_LUA_BUDGET_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Call the function below nargs arguments on L's stack as lua_pcall(L, nargs, nres, 0) does,
 * with a message handler that keeps the error value as it is and, if trace is not NULL,
 * sets *trace to a malloc'd "stack traceback:\n\t..." of where it was raised (the caller
 * frees it; NULL when the call succeeded or failed for lack of memory, where Lua runs no
 * handler). The traceback is built outside any memory cap of the state. Returns
 * lua_pcall's status; on error the value is on the stack. [-(nargs+1), +(nres|1), -] */
int hr_lua_pcall(lua_State *L, int nargs, int nres, char **trace);

/* hr_lua_pcall, stopping the call with the error "<where>: <what> exceeded its instruction
 * budget (<key> = N)" once it has run more than instructions VM instructions. The hook L
 * had before is put back. [-(nargs+1), +(nres|1), -] */
int hr_lua_pcall_budget(lua_State *L, int nargs, int nres, uint64_t instructions, const char *what,
                        const char *key, char **trace);

/* The traceback of co, a coroutine that lua_resume left failed (its stack is kept until it
 * is reset or closed), as a malloc'd "stack traceback:\n\t...", built on L (co's main
 * thread) outside any memory cap. NULL if L has no stack room for it. [-0, +0, m] */
char *hr_lua_thread_trace(lua_State *L, lua_State *co);

/* Charge n instructions' worth of work done in C (pattern matching) to the running
 * hr_lua_pcall_budget call, raising its error once the budget is spent. Does nothing outside
 * such a call. [-0, +0, v] */
void hr_lua_budget_charge(lua_State *L, uint64_t n);

/* Size classes of the blocks a capped state's allocator keeps for reuse: HR_LUA_CACHE_STEP
 * bytes apart, up to HR_LUA_CACHE_MAX bytes. */
#define HR_LUA_CACHE_STEP 16
#define HR_LUA_CACHE_MAX  1024

/* A memory cap for a Lua state: pass hr_lua_capped_alloc and a hr_lua_cap_t (zeroed but for
 * limit) to lua_newstate. While on, allocations that would take used + extra past limit fail
 * (Lua raises a memory error) and set denied; while off, the state grows freely (used is
 * still counted).
 *
 * Small blocks the state frees (HR_LUA_CACHE_MAX bytes or less) go to a free list per size
 * class, up to HR_LUA_CACHE_BYTES in all, and the next allocation of that class takes one
 * back without malloc: an event's tables and strings die young and the same sizes come
 * again. used counts what the state holds, not the cache (cached is what waits there). The
 * cache is emptied when the state has freed everything (lua_close: used falls to 0), and is
 * off in ASan builds so that a use after free of a Lua block is still caught.
 *
 * Up to HR_LUA_BIG_SLOTS larger blocks (up to HR_LUA_BIG_MAX bytes) it frees are kept too,
 * each for the next allocation it holds that is at least half its size: a lazily decoded
 * body's block (its text, tape and map) comes and goes with each event. */
#define HR_LUA_CACHE_BYTES (64 * 1024)
#define HR_LUA_BIG_SLOTS   4
#define HR_LUA_BIG_MAX     (64 * 1024)

/* 1 where the cache is on: not in ASan builds (gcc's macro; clang's test). */
#if defined(__SANITIZE_ADDRESS__)
#define HR_LUA_CACHE_ON 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HR_LUA_CACHE_ON 0
#endif
#endif
#ifndef HR_LUA_CACHE_ON
#define HR_LUA_CACHE_ON 1
#endif

typedef struct {
    size_t used;   /* bytes the state holds now */
    size_t limit;  /* refuse growth past this while on */
    size_t extra;  /* memory held outside the state (C buffers) that counts against limit */
    bool on;       /* the cap applies */
    bool denied;   /* an allocation was refused */
    size_t cached; /* bytes in free (below), not counted in used */
    void *free[HR_LUA_CACHE_MAX / HR_LUA_CACHE_STEP]; /* class i: blocks of (i + 1) * STEP
                                                         bytes, linked by their first word */
    void *big[HR_LUA_BIG_SLOTS];       /* larger blocks kept, NULL for an empty slot */
    size_t big_size[HR_LUA_BIG_SLOTS]; /* the bytes each holds (at least) */
} hr_lua_cap_t;

void *hr_lua_capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

#endif
