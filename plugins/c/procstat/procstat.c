/* procstat: a Sandglass command plugin in C (wasm32-wasip1, clang + wasi-libc).
 *
 * Reads /proc/stat and prints exposition text on stdout:
 *   - context switches and forks since boot (counters),
 *   - processes running and blocked now (gauges),
 *   - context switches since the previous run, from the state the agent hands
 *     back on stdin (what this program printed after "# STATE " last time).
 * Parameter: blocked_warn=N (argv "key=value"): WARN when more than N
 * processes are blocked on I/O (default 10).
 *
 * Build: clang --target=wasm32-wasi -Os -Wl,--strip-all -o procstat.wasm procstat.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long field(const char *text, const char *name) {
    size_t len = strlen(name);
    for (const char *line = text; line && *line; line = strchr(line, '\n')) {
        if (*line == '\n') line++;
        if (strncmp(line, name, len) == 0 && line[len] == ' ')
            return strtoll(line + len + 1, NULL, 10);
    }
    return -1;
}

int main(int argc, char **argv) {
    long long blocked_warn = 10;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "blocked_warn=", 13) == 0) {
            char *end;
            blocked_warn = strtoll(argv[i] + 13, &end, 10);
            if (*end != '\0') {
                fprintf(stderr, "blocked_warn must be a whole number, got %s\n", argv[i] + 13);
                return 2;
            }
        }
    }

    static char text[1 << 16];
    FILE *f = fopen("/proc/stat", "r");
    if (!f) {
        perror("cannot open /proc/stat");
        return 1;
    }
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';

    long long ctxt = field(text, "ctxt");
    long long forks = field(text, "processes");
    long long running = field(text, "procs_running");
    long long blocked = field(text, "procs_blocked");
    if (ctxt < 0 || forks < 0 || running < 0 || blocked < 0) {
        fprintf(stderr, "/proc/stat lacks ctxt, processes, procs_running or procs_blocked\n");
        return 1;
    }

    /* The previous run's ctxt, if any: the agent gives it back on stdin. */
    long long previous = -1;
    char state[64];
    if (fgets(state, sizeof state, stdin)) previous = strtoll(state, NULL, 10);

    printf("# TYPE procstat_context_switches_total counter\n");
    printf("procstat_context_switches_total %lld\n", ctxt);
    printf("# TYPE procstat_forks_total counter\n");
    printf("procstat_forks_total %lld\n", forks);
    printf("procstat_procs{state=\"running\"} %lld\n", running);
    printf("procstat_procs{state=\"blocked\"} %lld\n", blocked);
    if (previous >= 0 && ctxt >= previous)
        printf("procstat_context_switches_since_last_run %lld\n", ctxt - previous);
    if (blocked > blocked_warn)
        printf("# STATUS WARN %lld processes blocked on I/O (more than %lld)\n", blocked, blocked_warn);
    else
        printf("# STATUS OK %lld running, %lld blocked\n", running, blocked);
    printf("# STATE %lld\n", ctxt);
    return 0;
}
