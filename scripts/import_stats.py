"""Import structure of src/archselect: modules, function-local imports (-v lists them) and import cycles (strongly
connected groups of modules). `lint-imports` enforces the layering; this prints the figures.

    python3 scripts/import_stats.py [-v]      (from the repository root)
"""
import ast, os, sys, collections
root='src'
mods={}
for dp,dn,fn in os.walk(root):
    for f in fn:
        if f.endswith('.py'):
            p=os.path.join(dp,f); m=p[len(root)+1:-3].replace('/','.')
            if m.endswith('.__init__'): m=m[:-9]
            mods[m]=p
def resolve(m, node, ispkg):
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base=m.split('.') if ispkg else m.split('.')[:-1]
            base=base[:len(base)-(node.level-1)]
            mod='.'.join(base+([node.module] if node.module else []))
        else: mod=node.module or ''
        out=[]
        for a in node.names:
            cand=mod+'.'+a.name
            out.append(cand if cand in mods else mod)
        return out
    return [a.name for a in node.names]
edges=collections.defaultdict(set); local=0; localsites=[]
for m,p in mods.items():
    tree=ast.parse(open(p).read()); ispkg=p.endswith('__init__.py')
    for node in ast.walk(tree):
        if isinstance(node,(ast.Import,ast.ImportFrom)):
            tgts=[t for t in resolve(m,node,ispkg) if t.startswith('archselect')]
            for t in tgts:
                while t not in mods and '.' in t: t=t.rsplit('.',1)[0]
                if t in mods and t!=m: edges[m].add(t)
    # function-local imports
    for fn in ast.walk(tree):
        if isinstance(fn,(ast.FunctionDef,ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node,(ast.Import,ast.ImportFrom)):
                    local+=1; localsites.append((m,fn.name,ast.unparse(node)))
print('modules',len(mods),'function-local imports',local)
# SCC (Tarjan)
idx={};low={};st=[];on=set();sccs=[];c=[0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        s=[]
        while True:
            w=st.pop();on.discard(w);s.append(w)
            if w==v:break
        sccs.append(s)
for v in list(mods):
    if v not in idx: sc(v)
big=[s for s in sccs if len(s)>1]
print('cyclic SCCs',len(big))
for s in big: print(len(s),sorted(s))
if '-v' in sys.argv:
    for s in localsites: print(s)
