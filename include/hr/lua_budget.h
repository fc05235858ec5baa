/* Budgeted Lua calls: run top-level code (a config file, a rule file, a module) with an
 * instruction budget, and cap what a Lua state may allocate (src/lua_budget.c).
 *
 * Top-level code is Lua like any other: a `while true do end` at the top of a rule file
 * would hang a reload, `hookrouter check` and the loop that runs them. So every chunk the
 * router runs outside an event goes through hr_lua_pcall_budget, which stops it with an
 * error after a fixed number of VM instructions, the same way an event's own budget does
 * (a count hook that keeps firing once tripped, so a pcall inside cannot swallow it). */
#ifndef HR_LUA_BUDGET_H
#define HR_LUA_BUDGET_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Call the function below nargs arguments on L's stack as lua_pcall(L, nargs, nres, 0) does,
 * stopping it with the error "<where>: <what> exceeded its instruction budget (<key> = N)"
 * once it has run more than instructions VM instructions. The hook L had before is put back.
 * Returns lua_pcall's status; on error the message is on the stack. [-(nargs+1), +(nres|1), -] */
int hr_lua_pcall_budget(lua_State *L, int nargs, int nres, uint64_t instructions, const char *what,
                        const char *key);

/* Charge n instructions' worth of work done in C (pattern matching) to the running
 * hr_lua_pcall_budget call, raising its error once the budget is spent. Does nothing outside
 * such a call. [-0, +0, v] */
void hr_lua_budget_charge(lua_State *L, uint64_t n);

/* A memory cap for a Lua state: pass hr_lua_capped_alloc and a hr_lua_cap_t to lua_newstate.
 * While on, allocations that would take used + extra past limit fail (Lua raises a memory
 * error) and set denied; while off, the state grows freely (used is still counted). */
typedef struct {
    size_t used;  /* bytes the state holds now */
    size_t limit; /* refuse growth past this while on */
    size_t extra; /* memory held outside the state (C buffers) that counts against limit */
    bool on;      /* the cap applies */
    bool denied;  /* an allocation was refused */
} hr_lua_cap_t;

void *hr_lua_capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

#endif
